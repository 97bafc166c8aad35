"""Where each key of a TOML text is defined, which tomllib does not say.

The loader reports a problem at the line of the key it is about; pydantic gives the key's
path (`("recipes", "r", "command", 2)`), this scanner the line of that path.
"""

from __future__ import annotations

import bisect
import contextlib
import re
import tomllib

KeyPath = tuple[str | int, ...]
_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")


class _ScanError(Exception):
    """The key scanner met something it does not follow; keep what it found so far."""


class KeyLines:
    """Where each key of a TOML text is defined, which tomllib does not say.

    A small scanner over text tomllib already accepted: it follows table headers, dotted
    keys, inline tables and arrays (elements get their index as the last path part), and
    skips strings and comments. A path it did not see falls back to the nearest enclosing
    one, ending at the recipe's table header.
    """

    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0
        self.starts = [0, *(m.end() for m in re.finditer("\n", text))]
        self.explicit: dict[KeyPath, int] = {}
        self.implicit: dict[KeyPath, int] = {}

    @classmethod
    def scan(cls, text: str) -> KeyLines:
        lines = cls(text)
        with contextlib.suppress(_ScanError, IndexError, tomllib.TOMLDecodeError):
            lines._document()
        return lines

    def line(self, path: KeyPath) -> int | None:
        for n in range(len(path), 0, -1):
            found = self.explicit.get(path[:n]) or self.implicit.get(path[:n])
            if found is not None:
                return found
        return None

    def _record(self, path: KeyPath, pos: int) -> None:
        line = bisect.bisect_right(self.starts, pos)
        self.explicit.setdefault(path, line)
        for n in range(1, len(path)):
            self.implicit.setdefault(path[:n], line)

    def _peek(self) -> str:
        return self.text[self.pos : self.pos + 1]

    def _blank(self, *, newlines: bool = False) -> None:
        while self.pos < len(self.text):
            c = self.text[self.pos]
            if c in " \t" or (newlines and c in "\r\n"):
                self.pos += 1
            elif newlines and c == "#":
                end = self.text.find("\n", self.pos)
                self.pos = len(self.text) if end < 0 else end
            else:
                return

    def _expect(self, token: str) -> None:
        if not self.text.startswith(token, self.pos):
            raise _ScanError(f"expected {token!r} at {self.pos}")
        self.pos += len(token)

    def _document(self) -> None:
        table: KeyPath = ()
        while True:
            self._blank(newlines=True)
            if self.pos >= len(self.text):
                return
            start = self.pos
            if self._peek() == "[":
                double = self.text.startswith("[[", self.pos)
                self.pos += 2 if double else 1
                self._blank()
                table = self._key()
                self._blank()
                self._expect("]]" if double else "]")
                self._record(table, start)
            else:
                key = table + self._key()
                self._record(key, start)
                self._assignment_value(key)

    def _assignment_value(self, key: KeyPath) -> None:
        self._blank()
        self._expect("=")
        self._blank()
        self._value(key)

    def _key(self) -> KeyPath:
        parts: list[str | int] = [self._simple_key()]
        while True:
            self._blank()
            if self._peek() != ".":
                return tuple(parts)
            self.pos += 1
            self._blank()
            parts.append(self._simple_key())

    def _simple_key(self) -> str:
        if self._peek() in ("'", '"'):
            raw = self._string()
            value = tomllib.loads(f"k = {raw}")["k"]
            return str(value)
        match = _BARE_KEY.match(self.text, self.pos)
        if match is None:
            raise _ScanError(f"no key at {self.pos}")
        self.pos = match.end()
        return match.group()

    def _string(self) -> str:
        start = self.pos
        quote = self._peek()
        triple = self.text.startswith(quote * 3, self.pos)
        self.pos += 3 if triple else 1
        while self.pos < len(self.text):
            c = self.text[self.pos]
            if c == "\\" and quote == '"':
                self.pos += 2
            elif triple and self.text.startswith(quote * 3, self.pos):
                self.pos += 3
                for _ in range(2):  # up to two quotes may end the content
                    if self._peek() == quote:
                        self.pos += 1
                return self.text[start : self.pos]
            elif not triple and c == quote:
                self.pos += 1
                return self.text[start : self.pos]
            else:
                self.pos += 1
        raise _ScanError("unterminated string")

    def _value(self, path: KeyPath) -> None:
        c = self._peek()
        if c == "{":
            self.pos += 1
            self._blank(newlines=True)
            while self._peek() != "}":
                start = self.pos
                key = path + self._key()
                self._record(key, start)
                self._assignment_value(key)
                self._blank(newlines=True)
                if self._peek() == ",":
                    self.pos += 1
                    self._blank(newlines=True)
            self.pos += 1
        elif c == "[":
            self.pos += 1
            index = 0
            while True:
                self._blank(newlines=True)
                if self._peek() == "]":
                    self.pos += 1
                    return
                self._record((*path, index), self.pos)
                self._value((*path, index))
                index += 1
                self._blank(newlines=True)
                if self._peek() == ",":
                    self.pos += 1
        elif c in ("'", '"'):
            self._string()
        else:
            start = self.pos
            while self.pos < len(self.text) and self.text[self.pos] not in ",]}#\r\n":
                self.pos += 1
            if self.pos == start:
                raise _ScanError(f"no value at {start}")
