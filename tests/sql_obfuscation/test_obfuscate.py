"""SQL obfuscation: a table of MySQL/SQLite statements and their expected output."""

from __future__ import annotations

import pytest

from sql_obfuscation import _LITERAL_WORDS, _TOKEN, _cached, obfuscate_error_message, obfuscate_sql

CASES = [
    # literals
    ("SELECT * FROM users WHERE id = 42", "SELECT * FROM users WHERE id = ?"),
    ("SELECT * FROM users WHERE name = 'alice'", "SELECT * FROM users WHERE name = ?"),
    ("SELECT * FROM users WHERE name = \"alice\"", "SELECT * FROM users WHERE name = ?"),
    ("SELECT * FROM t WHERE s = 'it\\'s'", "SELECT * FROM t WHERE s = ?"),
    ("SELECT * FROM t WHERE s = 'it''s' AND u = 'x'", "SELECT * FROM t WHERE s = ? AND u = ?"),
    ("SELECT * FROM t WHERE s = \"say \"\"hi\"\"\"", "SELECT * FROM t WHERE s = ?"),
    ("SELECT * FROM t WHERE s = 'back\\\\' AND n = 1", "SELECT * FROM t WHERE s = ? AND n = ?"),
    ("SELECT * FROM t WHERE s = ''", "SELECT * FROM t WHERE s = ?"),
    ("SELECT * FROM t WHERE price > 10.5", "SELECT * FROM t WHERE price > ?"),
    ("SELECT * FROM t WHERE price > .5", "SELECT * FROM t WHERE price > ?"),
    ("SELECT * FROM t WHERE x = -7", "SELECT * FROM t WHERE x = ?"),
    ("SELECT * FROM t WHERE x = -7.25e-3", "SELECT * FROM t WHERE x = ?"),
    ("SELECT * FROM t WHERE x = 1e10", "SELECT * FROM t WHERE x = ?"),
    ("SELECT * FROM t WHERE flags = 0xFF", "SELECT * FROM t WHERE flags = ?"),
    ("SELECT * FROM t WHERE b = X'DEADBEEF'", "SELECT * FROM t WHERE b = ?"),
    ("SELECT * FROM t WHERE b = b'0101'", "SELECT * FROM t WHERE b = ?"),
    ("SELECT * FROM t WHERE s = _utf8mb4'x'", "SELECT * FROM t WHERE s = ?"),
    ("SELECT * FROM t WHERE active = TRUE AND deleted = false", "SELECT * FROM t WHERE active = ? AND deleted = ?"),
    ("SELECT * FROM t WHERE a IS NULL", "SELECT * FROM t WHERE a IS ?"),
    ("UPDATE t SET a = NULL WHERE id = 3", "UPDATE t SET a = ? WHERE id = ?"),
    # arithmetic keeps its operators; a minus after a value is subtraction
    ("SELECT a - 1, b-2, c * -3 FROM t", "SELECT a - ?, b-?, c * ? FROM t"),
    ("SELECT (a) - 1 FROM t", "SELECT (a) - ? FROM t"),
    ("SELECT count(*) + 1 FROM t", "SELECT count(*) + ? FROM t"),
    # identifiers kept
    ("SELECT col1, t2.col_3 FROM table1 AS t2", "SELECT col1, t2.col_3 FROM table1 AS t2"),
    ("SELECT `order`, `user id` FROM `my-db`.`t1` WHERE `x1` = 5",
     "SELECT `order`, `user id` FROM `my-db`.`t1` WHERE `x1` = ?"),
    ("SELECT md5(name), v2 FROM t9", "SELECT md5(name), v2 FROM t9"),
    ("SELECT @rownum := @rownum + 1 FROM t", "SELECT @rownum := @rownum + ? FROM t"),
    # placeholders
    ("SELECT * FROM t WHERE a = %s AND b = %s", "SELECT * FROM t WHERE a = ? AND b = ?"),
    ("SELECT * FROM t WHERE a = %(name)s", "SELECT * FROM t WHERE a = ?"),
    ("SELECT * FROM t WHERE a = ? AND b = ?", "SELECT * FROM t WHERE a = ? AND b = ?"),
    ("SELECT * FROM t WHERE a = :name AND b = ?1", "SELECT * FROM t WHERE a = ? AND b = ?"),
    ("SELECT * FROM t WHERE a = $1", "SELECT * FROM t WHERE a = ?"),
    # IN lists
    ("SELECT * FROM t WHERE id IN (1, 2, 3)", "SELECT * FROM t WHERE id IN ( ? )"),
    ("SELECT * FROM t WHERE id IN (%s,%s,%s)", "SELECT * FROM t WHERE id IN ( ? )"),
    ("SELECT * FROM t WHERE name IN ('a', 'b')", "SELECT * FROM t WHERE name IN ( ? )"),
    ("SELECT * FROM t WHERE id NOT IN (?)", "SELECT * FROM t WHERE id NOT IN ( ? )"),
    ("SELECT * FROM t WHERE id IN (SELECT id FROM u WHERE x = 1)",
     "SELECT * FROM t WHERE id IN (SELECT id FROM u WHERE x = ?)"),
    # VALUES
    ("INSERT INTO t (a, b) VALUES (1, 'x')", "INSERT INTO t (a, b) VALUES ( ? )"),
    ("INSERT INTO t (a, b) VALUES (1, 'x'), (2, 'y'), (3, 'z')", "INSERT INTO t (a, b) VALUES ( ? )"),
    ("INSERT INTO t VALUES (%s, %s), (%s, %s)", "INSERT INTO t VALUES ( ? )"),
    ("INSERT INTO t (a) VALUES (1),(2)", "INSERT INTO t (a) VALUES ( ? )"),
    ("INSERT INTO t (a, b) VALUES (1, NOW())", "INSERT INTO t (a, b) VALUES (?, NOW())"),
    ("INSERT INTO t (a) VALUES (1) ON DUPLICATE KEY UPDATE a = a + 1",
     "INSERT INTO t (a) VALUES ( ? ) ON DUPLICATE KEY UPDATE a = a + ?"),
    ("REPLACE INTO t VALUES ('a', 1)", "REPLACE INTO t VALUES ( ? )"),
    # comments of all three kinds, whitespace
    ("SELECT a -- the id\nFROM t", "SELECT a FROM t"),
    ("SELECT a # mysql comment\nFROM t", "SELECT a FROM t"),
    ("SELECT /* hint 'secret' */ a FROM t", "SELECT a FROM t"),
    ("/* leading */ SELECT 1", "SELECT ?"),
    ("SELECT a FROM t /* unterminated 'x'", "SELECT a FROM t"),
    ("SELECT /*+ MAX_EXECUTION_TIME(1000) */ a FROM t", "SELECT a FROM t"),
    ("  SELECT\n\ta,\n  b\r\nFROM   t  ", "SELECT a, b FROM t"),
    ("SELECT '-- not a comment' FROM t", "SELECT ? FROM t"),
    # LIMIT / OFFSET, subqueries, CALL, DDL, transactions
    ("SELECT * FROM t LIMIT 10 OFFSET 20", "SELECT * FROM t LIMIT ? OFFSET ?"),
    ("SELECT * FROM t LIMIT 5, 10", "SELECT * FROM t LIMIT ?, ?"),
    ("SELECT * FROM (SELECT a FROM t WHERE b > 3) AS sub WHERE a < 9",
     "SELECT * FROM (SELECT a FROM t WHERE b > ?) AS sub WHERE a < ?"),
    ("SELECT EXISTS(SELECT 1 FROM t WHERE id = 4)", "SELECT EXISTS(SELECT ? FROM t WHERE id = ?)"),
    ("CALL add_user('bob', 30)", "CALL add_user( ? )"),
    ("CALL refresh()", "CALL refresh()"),
    ("CREATE TABLE t2 (id INTEGER PRIMARY KEY, name VARCHAR(255) DEFAULT 'x')",
     "CREATE TABLE t2 (id INTEGER PRIMARY KEY, name VARCHAR( ? ) DEFAULT ?)"),
    ("BEGIN", "BEGIN"),
    ("COMMIT", "COMMIT"),
    ("DELETE FROM sessions WHERE expires < 1700000000", "DELETE FROM sessions WHERE expires < ?"),
    ("UPDATE users SET email = 'a@b.c', visits = visits + 1 WHERE id = 12",
     "UPDATE users SET email = ?, visits = visits + ? WHERE id = ?"),
    ("SELECT * FROM t WHERE a BETWEEN 1 AND 10", "SELECT * FROM t WHERE a BETWEEN ? AND ?"),
    ("SELECT * FROM t WHERE name LIKE 'al%'", "SELECT * FROM t WHERE name LIKE ?"),
    ("SELECT CASE WHEN a > 0 THEN 'pos' ELSE 'neg' END FROM t",
     "SELECT CASE WHEN a > ? THEN ? ELSE ? END FROM t"),
    ("PRAGMA table_info('users')", "PRAGMA table_info( ? )"),
    ("SELECT * FROM t WHERE ts > '2024-01-01 10:00:00'", "SELECT * FROM t WHERE ts > ?"),
    ("SELECT 'unterminated", "SELECT ?"),
    ("SELECT * FROM t; SELECT 2;", "SELECT * FROM t; SELECT ?;"),
    ("SELECT données FROM tâble WHERE ü = 'ö'", "SELECT données FROM tâble WHERE ü = ?"),
]


def test_table_exercises_every_token_kind() -> None:
    # Each lexer alternative (and each literal word) is hit by some case, so a
    # rule dropped from the table is noticed, not only a shrinking table.
    seen = {m.lastgroup for raw, _ in CASES for m in _TOKEN.finditer(raw)}
    assert set(_TOKEN.groupindex) <= seen, set(_TOKEN.groupindex) - seen
    words = {m.group().upper() for raw, _ in CASES for m in _TOKEN.finditer(raw) if m.lastgroup == "ident"}
    assert not _LITERAL_WORDS - words, _LITERAL_WORDS - words


@pytest.mark.parametrize(("raw", "expected"), CASES, ids=[c[0][:40] for c in CASES])
def test_obfuscate(raw: str, expected: str) -> None:
    assert obfuscate_sql(raw) == expected


SECRETS = ("alice", "it\\'s", "it''s", "DEADBEEF", "0101", "10.5", "a@b.c")  # as written in the SQL
WITH_SECRETS = [raw for raw, _ in CASES if any(secret in raw for secret in SECRETS)]


def test_every_secret_is_in_a_case_and_in_no_expected_output() -> None:
    for secret in SECRETS:
        assert any(secret in raw for raw in WITH_SECRETS), f"no case holds {secret!r}"
        assert not [out for _, out in CASES if secret in out], f"an expected output leaks {secret!r}"


@pytest.mark.parametrize("raw", WITH_SECRETS)
def test_no_literal_survives(raw: str) -> None:
    out = obfuscate_sql(raw)
    for secret in SECRETS:
        if secret in raw:
            assert secret not in out


def test_cached_per_statement() -> None:
    _cached.cache_clear()
    sql = "SELECT * FROM cache_test WHERE id = 1"
    for _ in range(5):
        obfuscate_sql(sql)
    info = _cached.cache_info()
    assert (info.misses, info.hits) == (1, 4)
    assert info.maxsize is not None  # bounded


def test_error_message_quotes_replaced() -> None:
    assert obfuscate_error_message("1062 (23000): Duplicate entry 'alice@example.com' for key 'users.email'") == (
        "1062 (23000): Duplicate entry ? for key ?")
    assert obfuscate_error_message(
        "You have an error in your SQL syntax; check the manual near 'FROM users WHERE pw=\"x\"' at line 1"
    ) == "You have an error in your SQL syntax; check the manual near ? at line 1"
    assert obfuscate_error_message("no such table: users") == "no such table: users"
