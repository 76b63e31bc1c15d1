"""matomo_rt.redact: the token, however it is spelled, never reaches a message."""

from __future__ import annotations

import pytest

from matomo_rt.redact import describe_argv, redact

SECRET = "s3cr3t/t0ken+x&y"


@pytest.mark.parametrize(
    "text, expected",
    [
        (f"token is {SECRET}.", "token is ***."),
        ("url ?a=1&token_auth=s3cr3t%2Ft0ken%2Bx%26y&b=2", "url ?a=1&token_auth=***&b=2"),
        ("lower-case escapes s3cr3t%2ft0ken%2bx%26y", "lower-case escapes ***"),
        ("form s3cr3t%2Ft0ken%2Bx%26y end", "form *** end"),
        ("path s3cr3t/t0ken%2Bx%26y end", "path *** end"),
        ("no secrets here", "no secrets here"),
    ],
)
def test_redact_secret_and_url_encoded_forms(text: str, expected: str) -> None:
    assert redact(text, [SECRET]) == expected


@pytest.mark.parametrize(
    "text, expected",
    [
        ("GET /?module=API&token_auth=abc123&x=1", "GET /?module=API&token_auth=***&x=1"),
        ('{"token_auth": "abc123", "a": 1}', '{"token_auth": "***", "a": 1}'),
        ("import_logs.py --token-auth abc123 -", "import_logs.py --token-auth *** -"),
        ("import_logs.py --token-auth=abc123 -", "import_logs.py --token-auth=*** -"),
        ("MATOMO_TOKEN_AUTH=abc123", "MATOMO_TOKEN_AUTH=***"),
    ],
)
def test_redact_token_auth_patterns_without_knowing_the_token(text: str, expected: str) -> None:
    assert redact(text, []) == expected


def test_redact_ignores_empty_secrets_and_masks_longest_first() -> None:
    assert redact("abcdef", ["", "abc", "abcdef"]) == "***"


def test_describe_argv_redacts_before_quoting_and_is_one_line() -> None:
    """Quoting first could split a secret holding a quote; a newline would split the line."""
    line = describe_argv(["prog", "it's a s3cr'et\nnext"], ["s3cr'et"])
    assert line == "prog 'it'\"'\"'s a ***\\x0anext'"
    assert "s3cr" not in line and "\n" not in line
