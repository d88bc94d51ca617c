"""Field parsing for source specs (unif2ace/data/spec.py): dotted paths into rows, JSON text,
caption lists, QA lists, LLaVA conversations. Every failure is a FieldError whose message
becomes one problem line naming the file and row.
"""
from __future__ import annotations

import json
import re
from typing import Any

from unif2ace.data.sources import QA


class FieldError(ValueError):
    """A field that does not hold what the spec says it holds."""


def get_path(row: Any, path: str) -> Any:
    """``row`` at dotted ``path`` (list items by index); None where any step is missing."""
    cur = row
    for part in path.split("."):
        if isinstance(cur, dict):
            cur = cur.get(part)
        elif isinstance(cur, (list, tuple)) and part.lstrip("-").isdigit() and -len(cur) <= int(part) < len(cur):
            cur = cur[int(part)]
        else:
            return None
        if cur is None:
            return None
    return cur


def json_text(value: Any, what: str) -> Any:
    """Parse a str holding JSON (common for nested fields in parquet); other values pass."""
    if isinstance(value, str) and value.strip()[:1] in ("[", "{"):
        try:
            return json.loads(value)
        except json.JSONDecodeError as e:
            raise FieldError(f"{what} is text that starts like JSON but does not parse ({e.msg} at char {e.pos})")
    return value



def captions(value: Any) -> list[str]:
    """A caption, a list of captions (or {caption|text} objects), or the JSON text of either."""
    value = json_text(value, "caption")
    if value is None:
        return []
    items = value if isinstance(value, (list, tuple)) else [value]
    out = []
    for c in items:
        if isinstance(c, dict):  # {"caption": …} / {"text": …} objects
            c = c.get("caption", c.get("text"))
        if not isinstance(c, str):
            raise FieldError(f"caption item {c!r} is not text")
        if c.strip():
            out.append(c.strip())
    return out


def qa_items(value: Any, k) -> list[QA]:
    """QA objects (keys ``k``: QAKeys) or [question, answer] pairs, or their JSON text."""
    value = json_text(value, "qa")
    if value is None:
        return []
    if isinstance(value, dict):
        value = [value]
    if not isinstance(value, (list, tuple)):
        raise FieldError(f"qa is a {type(value).__name__}, not a list of question/answer objects")
    out = []
    for i, item in enumerate(value):
        if isinstance(item, (list, tuple)) and len(item) == 2:
            q, a, cat = item[0], item[1], ""
        elif isinstance(item, dict):
            q, a = get_path(item, k.question), get_path(item, k.answer)
            cat = get_path(item, k.category) if k.category else ""
        else:
            raise FieldError(f"qa[{i}] is {item!r}, not a question/answer object")
        if q is None or a is None or not str(q).strip() or not str(a).strip():
            raise FieldError(f"qa[{i}] lacks '{k.question}' or '{k.answer}' (keys: {sorted(item) if isinstance(item, dict) else '-'})")
        out.append(QA(str(q).strip(), str(a).strip(), "" if cat is None else str(cat)))
    return out


_IMAGE_MARK = re.compile(r"\s*<image>\s*")


def conversation(value: Any, k) -> tuple[list[QA], list[str]]:
    """LLaVA turns → (question, answer) pairs with the <image> markers removed; notes on
    turns that could not be paired."""
    value = json_text(value, "conversations")
    if value is None:
        return [], []
    if not isinstance(value, (list, tuple)):
        raise FieldError(f"conversations is a {type(value).__name__}, not a list of turns")
    out, notes, pending = [], [], None
    for i, turn in enumerate(value):
        role = get_path(turn, k.role) if isinstance(turn, dict) else None
        text = get_path(turn, k.text) if isinstance(turn, dict) else None
        if role is None or text is None:
            raise FieldError(f"conversations[{i}] lacks '{k.role}' or '{k.text}'")
        text = _IMAGE_MARK.sub(" ", str(text)).strip()
        if role in k.user:
            if pending is not None:
                notes.append(f"conversations[{i - 1}]: question without an answer")
            pending = text
        elif role in k.assistant:
            if pending is None:
                notes.append(f"conversations[{i}]: answer without a question")
            elif text and pending:
                out.append(QA(pending, text))
            else:
                notes.append(f"conversations[{i}]: empty question or answer")
            pending = None
        else:
            notes.append(f"conversations[{i}]: unknown role {role!r} (user {k.user}, assistant {k.assistant})")
    if pending is not None:
        notes.append("last question has no answer")
    return out, notes


def split_questions(row: dict, f) -> list[QA]:
    """Question / answer / category fields (``f``: Fields) holding one value or a list each."""
    qs, ans = get_path(row, f.question), get_path(row, f.answer)
    if qs is None and ans is None:
        return []
    qs = qs if isinstance(qs, list) else [qs]
    ans = ans if isinstance(ans, list) else [ans]
    cats = get_path(row, f.category) if f.category else None
    cats = cats if isinstance(cats, list) else [cats] * len(qs)
    if len(qs) != len(ans):
        raise FieldError(f"{len(qs)} questions but {len(ans)} answers")
    return [QA(str(q).strip(), str(a).strip(), "" if c is None else str(c))
            for q, a, c in zip(qs, ans, cats) if q is not None and a is not None]
