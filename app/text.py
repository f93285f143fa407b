"""Text on the page: anything that can carry user input is escaped before it reaches an HTML pane.

Star ids, population names, expressions, file names and sky positions come from a visitor or from a
shared URL. Markdown and HTML panes render markup, so such text goes through :func:`esc` (or
:func:`message_html`) and is shown as text, never as HTML.
"""
from __future__ import annotations

import html

# Background / border / text colours of the message box per level (Bootstrap's alert palette).
_LEVELS = {"info": ("#cff4fc", "#b6effb", "#055160"), "success": ("#d1e7dd", "#badbcc", "#0f5132"),
           "warning": ("#fff3cd", "#ffecb5", "#664d03"), "danger": ("#f8d7da", "#f5c2c7", "#842029")}


def esc(text) -> str:
    """``text`` as HTML that displays exactly those characters (quotes included)."""
    return html.escape(str(text), quote=True)


def message_html(text: str, level: str = "info") -> str:
    """A coloured message box whose content is ``text`` shown as text."""
    bg, border, fg = _LEVELS.get(level, _LEVELS["info"])
    return (f'<div role="alert" class="desa-message desa-message-{esc(level)}" style="background:{bg};'
            f'border:1px solid {border};color:{fg};padding:8px 12px;border-radius:4px;white-space:pre-wrap">'
            f'{esc(text)}</div>')
