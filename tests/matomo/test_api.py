"""Readable reasons from whatever answers at Matomo's URL: words, never markup or CSS."""

from __future__ import annotations

from matomo_rt.matomo.api import html_reason, looks_like_html, text_reason

# PHP 8.2's built-in server (`php -S`, which the real-Matomo tests use) for a path it lacks.
PHP_404 = """<!doctype html><html><head><title>404 Not Found</title><style>
body { background-color: #fcfcfc; color: #333333; margin: 0; padding:0; }
h1 { font-size: 1.5em; font-weight: normal; background-color: #9999cc; }
code.url { background-color: #eeeeee; font-family:monospace; padding:0 2px;}
</style>
</head><body><h1>Not Found</h1><p>The requested resource <code class="url">/wrong/index.php?\
module=API&amp;format=json</code> was not found on this server.</p></body></html>"""
# nginx's own error page.
NGINX_404 = (
    "<html>\r\n<head><title>404 Not Found</title></head>\r\n<body>\r\n<center><h1>404 Not Found"
    "</h1></center>\r\n<hr><center>nginx/1.22.1</center>\r\n</body>\r\n</html>\r\n"
)
# Matomo's error page (core/ExceptionHandler: the simple layout, "An error occurred", the
# message in <h2>, links back).
MATOMO_ERROR = """<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>Matomo &rsaquo; Error</title>
<link rel="stylesheet" type="text/css" href="plugins/Morpheus/stylesheets/simple_structure.css" />
<script type="text/javascript">var piwik = {};</script></head>
<body id="simple"><div class="logo"><img title="Matomo" alt="Matomo" src="logo.svg"/></div>
<div class="box"><div class="header"><h1>An error occurred</h1></div><div class="content">
<h2>Unable to authenticate with the provided token. It is either invalid or expired.</h2>
<p><a href="javascript:window.history.back();">Go Back</a> | <a href="index.php">Go to Matomo</a>
</p></div></div></body></html>"""


def test_a_php_404_page_is_its_title_and_sentence() -> None:
    assert html_reason(PHP_404) == (
        "404 Not Found: The requested resource /wrong/index.php?module=API&format=json was not "
        "found on this server."
    )


def test_an_nginx_404_page() -> None:
    assert html_reason(NGINX_404) == "404 Not Found: nginx/1.22.1"


def test_matomos_error_page_gives_the_message_not_the_heading() -> None:
    assert html_reason(MATOMO_ERROR) == (
        "Matomo \u203a Error: Unable to authenticate with the provided token. It is either invalid "
        "or expired."
    )


def test_no_markup_and_no_cut_words() -> None:
    page = "<html><head><title>Oops</title></head><body><p>" + "word " * 200 + "</p></body></html>"
    reason = html_reason(page, limit=100)
    assert "<" not in reason and reason.endswith("word …") and len(reason) <= 102
    assert text_reason("x" * 50 + " " + "y" * 80, limit=60) == "x" * 50 + " …"


def test_plain_text_stays_text() -> None:
    assert not looks_like_html("Service Unavailable\n")
    assert text_reason("  Service\nUnavailable \n") == "Service Unavailable"
    assert text_reason("") == "an empty answer"
    assert looks_like_html(PHP_404) and looks_like_html(MATOMO_ERROR)
