"""The Flask app the Flask integration tests serve (test client, werkzeug
server in a thread, ``tracer-run gunicorn``/``flask run`` subprocesses).

It never imports the tracer: tracing comes from ``patch()`` or ``tracer-run``.
``DOWNSTREAM_URL`` (environment, or ``app.config``) is the second app that
``/call`` reaches with ``requests``.
"""

from __future__ import annotations

import os
import time

import requests
from flask import (
    Blueprint,
    Flask,
    Response,
    abort,
    jsonify,
    render_template,
    render_template_string,
    send_file,
    stream_with_context,
)

app = Flask(__name__)
app.config["PROPAGATE_EXCEPTIONS"] = False  # unhandled errors become a 500, as in production
app.config["DOWNSTREAM_URL"] = os.environ.get("DOWNSTREAM_URL", "")


class Handled(Exception):
    """Raised by /handled; its error handler answers 200."""


@app.route("/")
def index() -> str:
    return "hello"


@app.route("/users/<int:user_id>")
def get_user(user_id: int) -> Response:
    return jsonify(id=user_id)


@app.route("/forbidden")
def forbidden() -> str:
    abort(403)


@app.route("/boom")
def boom() -> str:
    raise ValueError("boom")


@app.route("/handled")
def handled() -> str:
    raise Handled("handled it")


@app.errorhandler(Handled)
def on_handled(exc: Handled) -> tuple[str, int]:
    return f"recovered: {exc}", 200


@app.route("/stream")
def stream() -> Response:
    def chunks():
        for i in range(3):
            time.sleep(0.05)
            yield render_template_string("chunk{{ i }}", i=i) + "\n"

    return Response(stream_with_context(chunks()), mimetype="text/plain")


@app.route("/template")
def template() -> str:
    return render_template("hello.html", name="world")


@app.route("/template-string")
def template_string() -> str:
    return render_template_string("<b>{{ n }}</b>", n=42)


@app.route("/file")
def file() -> Response:
    return send_file(os.path.join(app.root_path, "templates", "hello.html"), mimetype="text/plain")


@app.route("/call")
def call() -> str:
    reply = requests.get(app.config["DOWNSTREAM_URL"] + "/users/7", timeout=5)
    return f"downstream said {reply.status_code} {reply.text.strip()}"


api = Blueprint("api", __name__, url_prefix="/api")


@api.before_request
def authenticate() -> None:
    pass


@api.after_request
def add_header(response: Response) -> Response:
    response.headers["X-Api"] = "1"
    return response


@api.teardown_request
def release(exc: BaseException | None) -> None:
    pass


@api.route("/items/<name>")
def get_item(name: str) -> dict:
    return {"item": name}


app.register_blueprint(api)
