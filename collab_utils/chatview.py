"""A readable HTML view of a conversation for notebooks: one bubble per message.

    chatview.show(future.messages, goal=task.goal, title="ask-first, sample 0")
    chatview.side_by_side(chatview.show(a, title="base"), chatview.show(b, title="trained"))

The user's hidden goal is shown apart, above the chat, because the assistant never sees it.
"""

from __future__ import annotations

import html
import re

_COLORS = {"user": "#e8f0fe", "assistant": "#f1f3f4", "system": "#fff4e5"}
_FENCE = re.compile(r"```[^\n]*\n(.*?)```", re.DOTALL)


def _render_text(text: str) -> str:
    """Escaped text with fenced code as <pre> blocks and line breaks kept elsewhere."""
    parts, last = [], 0
    for match in _FENCE.finditer(text):
        parts.append(html.escape(text[last : match.start()]).replace("\n", "<br>"))
        parts.append(f"<pre style='margin:4px 0'>{html.escape(match.group(1))}</pre>")
        last = match.end()
    parts.append(html.escape(text[last:]).replace("\n", "<br>"))
    return "".join(parts)


class ChatView:
    """A conversation that Jupyter displays as HTML."""

    def __init__(self, conversation: list[dict], goal: str | None = None, title: str | None = None):
        self.conversation, self.goal, self.title = conversation, goal, title

    def _repr_html_(self) -> str:
        blocks = []
        if self.title:
            blocks.append(f"<h4 style='margin:4px 0'>{html.escape(self.title)}</h4>")
        if self.goal:
            blocks.append(
                "<div style='border:1px dashed #999;padding:6px;margin-bottom:8px'>"
                f"<b>hidden goal (user only)</b><br>{_render_text(self.goal)}</div>"
            )
        for message in self.conversation:
            role = message["role"]
            align = "right" if role == "user" else "left"
            blocks.append(
                f"<div style='text-align:{align}'><div style='display:inline-block;"
                f"max-width:85%;text-align:left;background:{_COLORS.get(role, '#fff')};"
                "border-radius:8px;padding:6px 10px;margin:3px 0'>"
                f"<b>{html.escape(role)}</b><br>{_render_text(message['content'])}</div></div>"
            )
        return "<div style='font-family:sans-serif;font-size:13px'>" + "".join(blocks) + "</div>"


def show(conversation: list[dict], goal: str | None = None, title: str | None = None) -> ChatView:
    """A `ChatView` of `conversation`; the last expression of a cell displays it."""
    return ChatView(conversation, goal, title)


class SideBySide:
    """Chat views in columns under an optional heading; Jupyter displays it as HTML."""

    def __init__(self, views: list[ChatView], heading: str | None = None):
        self.views, self.heading = views, heading

    def _repr_html_(self) -> str:
        head = f"<div><b>{html.escape(self.heading)}</b></div>" if self.heading else ""
        columns = "".join(f"<div style='flex:1'>{v._repr_html_()}</div>" for v in self.views)
        return f"{head}<div style='display:flex;gap:12px'>{columns}</div>"


def side_by_side(*views: ChatView, heading: str | None = None) -> SideBySide:
    """Chat views next to each other, e.g. chosen and rejected, or base and trained."""
    return SideBySide(list(views), heading)
