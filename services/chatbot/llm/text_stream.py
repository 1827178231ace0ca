"""Token bytes -> text pieces for one sequence: UTF-8 across token boundaries, stop strings."""

from __future__ import annotations

import codecs


class TextStream:
    """Decodes a sequence's token pieces; holds back text that may begin a stop string.

    A multi-byte character split over tokens comes out whole with the token that completes
    it. Text that could be the start of a stop string waits until it is clearly not one;
    at a stop string the text before it is the last piece.
    """

    def __init__(self, stops: tuple[str, ...] = ()) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")("replace")
        self._stops = tuple(s for s in stops if s)
        self._held = ""

    def feed(self, piece: bytes) -> tuple[str, bool]:
        """The text now safe to emit, and whether a stop string ended the sequence."""
        text = self._decoder.decode(piece)
        if not self._stops:
            return text, False
        text = self._held + text
        cut = min((i for s in self._stops if (i := text.find(s)) >= 0), default=-1)
        if cut >= 0:
            self._held = ""
            return text[:cut], True
        hold = 0
        for stop in self._stops:
            for n in range(min(len(stop) - 1, len(text)), hold, -1):
                if text.endswith(stop[:n]):
                    hold = n
                    break
        self._held = text[len(text) - hold:] if hold else ""
        return text[:len(text) - hold], False

    def flush(self) -> str:
        """What is left at the end of the sequence (held text, an incomplete character)."""
        text = self._held + self._decoder.decode(b"", final=True)
        self._held = ""
        return text
