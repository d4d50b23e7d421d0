"""The daemon's messages in a reader's words: where a message names an RPC as its fix ("create it
with CreateModel"), the CLI says the command (`tessera.rpc_commands`), the SDK the call
(`tessera.sdk_words`) that does the same. This is the rewriting both share, each with its tables."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field

SERVICES = ("Registry", "Datasets", "Training", "Inference", "System")

# A name a message quotes, as Python's repr writes it ('clips', "it's"): the user's own text. A
# quote after a letter is an apostrophe ("the daemon's"), not the start of one.
_QUOTED = re.compile(r"""(?<!\w)(?:'(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*")(?!\w)""")
# In a fix, what names no RPC or field to say otherwise: a backquoted span (words already said
# for a reader), and a list of names a message gives ("its outputs are force, Deploy": the model
# author's, as unquoted as the daemon's words).
_NOT_THE_DAEMONS = re.compile(r"`[^`]*`|\bare (?:[\w./-]+, )*[\w./-]+")
# An RPC told to name a version ("LoadModel naming version 3").
_VERSIONED_RPC = r"\b({}) naming version (\d+)"


def _one_of(words: Mapping[str, str]) -> str:
    # Longest first, so that UploadVersionInline is not read as UploadVersion.
    return "|".join(sorted(words, key=len, reverse=True))


@dataclass(frozen=True)
class Words:
    """A reader's words for what the daemon's messages name: `by_rpc` an RPC -> what does it;
    `by_versioned_rpc` an RPC told to name a version -> the same with "{}" for the version;
    `by_field` a request field to set -> what sets it; `by_argument` the SDK's words for a
    client argument or call -> the reader's (a backquoted one is put in anywhere in a message,
    as an unreachable daemon's message has one in each clause)."""

    by_rpc: Mapping[str, str]
    by_versioned_rpc: Mapping[str, str] = field(default_factory=dict)
    by_field: Mapping[str, str] = field(default_factory=dict)
    by_argument: Mapping[str, str] = field(default_factory=dict)
    _rpc_word: re.Pattern[str] = field(init=False, repr=False)
    _method_path: re.Pattern[str] = field(init=False, repr=False)
    _versioned_rpc: re.Pattern[str] | None = field(init=False, repr=False)
    _field_word: re.Pattern[str] | None = field(init=False, repr=False)

    def __post_init__(self) -> None:
        services = "|".join(SERVICES)
        rpcs = _one_of(self.by_rpc)
        # An RPC bare, as Service.Rpc, or as its method path tessera.v1.Service/Rpc (which
        # PERMISSION_DENIED names): the whole of it becomes the reader's words.
        rpc_word = rf"(?:\btessera\.v1\.(?:{services})/|\b(?:{services})\.)?\b({rpcs})\b"
        object.__setattr__(self, "_rpc_word", re.compile(rpc_word))
        object.__setattr__(self, "_method_path", re.compile(rf"\btessera\.v1\.(?:{services})/({rpcs})\b"))
        versioned = (
            re.compile(_VERSIONED_RPC.format(_one_of(self.by_versioned_rpc)))
            if self.by_versioned_rpc
            else None
        )
        object.__setattr__(self, "_versioned_rpc", versioned)
        fields = re.compile(rf"\b({_one_of(self.by_field)})\b") if self.by_field else None
        object.__setattr__(self, "_field_word", fields)

    def say(self, message: str) -> str:
        """`message` with the fix that ends each of its lines in these words (a spec's problems
        come one to a line, each with its own fix); see `_line`."""
        return "\n".join(self._line(line) for line in message.split("\n"))

    def _line(self, message: str) -> str:
        """`message` (one line) with the fix that ends it (what follows its last "; ", or the
        whole of a line without one) in these words: each RPC it names (bare, as Service.Rpc or
        tessera.v1.Service/Rpc), each request field or client argument it tells the caller to
        set. Before the fix a message says what went wrong, in the user's own text too (a path
        given, a run id), so only what no such text holds is put there: a method path, and the
        backquoted `argument=` words. The names a message quotes are the user's and stay as
        they are anywhere; in the fix, so do backquoted words and a list after "are"
        (`_NOT_THE_DAEMONS`)."""
        quoted = [match.span() for match in _QUOTED.finditer(message)]
        outside = list(message)
        for start, end in quoted:
            outside[start:end] = "\0" * (end - start)
        last = "".join(outside).rfind("; ")
        fix_start = last + 2 if last >= 0 else 0
        said = []
        at = 0
        for start, end in [*quoted, (len(message), len(message))]:
            plain = message[at:start]
            split = min(max(fix_start - at, 0), len(plain))
            said += [self._before_the_fix(plain[:split]), self._of_the_fix(plain[split:])]
            said.append(message[start:end])
            at = end
        return "".join(said)

    def _before_the_fix(self, text: str) -> str:
        for argument, words in self.by_argument.items():
            if argument.startswith("`"):
                text = text.replace(argument, words)
        return self._method_path.sub(lambda match: self.by_rpc[match.group(1)], text)

    def _of_the_fix(self, text: str) -> str:
        for argument, words in self.by_argument.items():
            text = text.replace(argument, words)
        said = []
        at = 0
        for kept in [*_NOT_THE_DAEMONS.finditer(text), None]:
            start, end = kept.span() if kept is not None else (len(text), len(text))
            said += [self._names_of_the_fix(text[at:start]), text[start:end]]
            at = end
        return "".join(said)

    def _names_of_the_fix(self, text: str) -> str:
        if self._versioned_rpc is not None:
            text = self._versioned_rpc.sub(
                lambda match: self.by_versioned_rpc[match[1]].format(match[2]), text
            )
        text = self._rpc_word.sub(lambda match: self.by_rpc[match.group(1)], text)
        if self._field_word is not None:
            text = self._field_word.sub(lambda match: self.by_field[match.group(1)], text)
        return text
