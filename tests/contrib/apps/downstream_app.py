"""A second Flask service, called by ``flask_app``'s ``/call`` over HTTP."""

from __future__ import annotations

from flask import Flask, jsonify

app = Flask(__name__)


@app.route("/users/<int:user_id>")
def downstream_user(user_id: int):
    return jsonify(id=user_id, source="downstream")
