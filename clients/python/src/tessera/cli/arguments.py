"""argparse's types for the command line's values, and the mistakes on it that argparse cannot see."""

from __future__ import annotations

import argparse
import contextlib
import math
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, TypeVar

from tessera.ensembles import member_pair
from tessera.errors import AlreadyExists, NotFound
from tessera.messages import (
    INT64_MAX,
    MODEL_URI_PREFIX,
    dataset_ref,
    is_digits,
    model_uri_parts,
    parse_setting,
    whole_number,
)
from tessera.rpc_commands import in_cli_words
from tessera.run_filter import (
    RunFilterError,
    parse_metric_condition,
)
from tessera.transport import (
    MAX_TIMEOUT_S,
    MAX_TIMEOUT_TEXT,
    TARGET_ENV,
    check_keepalive,
    check_target,
    parse_seconds,
)
from tessera.v1 import training_pb2

# The CLI's alone: a program using the SDK chooses its deadlines in its code (`timeout=`,
# `transfer_timeout=`).
TIMEOUT_ENV = "TESSERA_TIMEOUT_S"
TRANSFER_TIMEOUT_ENV = "TESSERA_TRANSFER_TIMEOUT_S"
INT32_MAX = 2**31 - 1


_V = TypeVar("_V")


class FromEnv(str):
    """A flag's value read from an environment variable: argparse passes a default that is text
    to the flag's type as it does what the command line gave, and this one says where it came
    from, for the type's refusal to name."""

    env: str

    def __new__(cls, text: str, env: str) -> FromEnv:
        value = super().__new__(cls, text)
        value.env = env
        return value


def env_default(env: str) -> FromEnv | None:
    """The value of the environment variable `env` as a flag's default; None when unset or empty."""
    text = os.environ.get(env)
    return FromEnv(text, env) if text else None


def source(text: str, flag: str) -> str:
    """Where `text`, the value of `flag`, came from, for a refusal to name: the flag or the env."""
    return f"env {text.env}" if isinstance(text, FromEnv) else flag


class UsageError(ValueError):
    """A mistake on the command line that argparse cannot see (flags that go together, a file
    whose suffix says nothing): it exits 2 under the command's usage line, as argparse's own do."""


class InCliWords:
    """An error the CLI made itself, its message already in the CLI's words: printed as it is. A
    daemon's message has the RPCs and fields it names said as commands and flags, which would
    rewrite the user's own names in this one (a metric named force as --force)."""


class NotFoundInCliWords(InCliWords, NotFound):
    """NOT_FOUND (exit 3) that the CLI found itself, in its own words."""


class AlreadyExistsInCliWords(InCliWords, AlreadyExists):
    """ALREADY_EXISTS (exit 3) from the daemon, its fix put in the CLI's words by the command."""


@contextlib.contextmanager
def replaced_only_with_force() -> Iterator[None]:
    """A refusal of a file already at a name the user gave (a download's overwrite=False,
    check_free) as the usage error `admin backup` gives for one: exit 2, naming --force."""
    try:
        yield
    except FileExistsError as err:
        raise UsageError(f"{err.filename} exists; pass --force to replace it") from None


@contextlib.contextmanager
def refused_resume_in_cli_words() -> Iterator[None]:
    """A download's refused resume (ValueError) saying how to go on in the CLI's words
    (--resume), not the SDK's (resume=True)."""
    try:
        yield
    except ValueError as err:
        raise ValueError(in_cli_words(str(err))) from None


def selector(text: str) -> int | str:
    """A version given on the command line: a number, or else an alias."""
    return whole_number(text) if is_digits(text) else text


# How every command naming a version takes it and says so in its --help.
VERSION_METAVAR = "N|ALIAS"
VERSION_WORDS = "a version number (from 1) or an alias"


def version_or_alias(text: str) -> int | str:
    """argparse's type for a version number or an alias: a number that is no version (0, -1,
    past int64) is refused here, where the daemon would read "-1" as an alias's name."""
    if not is_digits(text.removeprefix("-")):
        return text
    number = _digits_number(text)
    if number is None or number < 1:
        raise argparse.ArgumentTypeError(f"a version is a number from 1 or an alias, got {_shown(text)!r}")
    return number


def version_number(text: str) -> int:
    """argparse's type for a version that must be given by its number."""
    number = _digits_number(text)
    if number is None or number < 1:
        raise argparse.ArgumentTypeError(f"a version is a number from 1, got {_shown(text)!r}")
    return number


def add_version_flags(sub: argparse.ArgumentParser, default: str) -> None:
    """--version N|ALIAS and --alias ALIAS, one or the other (both: a usage error), as every
    command naming a version takes it; `picked_version` reads them."""
    flags = sub.add_mutually_exclusive_group()
    flags.add_argument(
        "--version", type=version_or_alias, metavar=VERSION_METAVAR, help=f"{VERSION_WORDS} ({default})"
    )
    flags.add_argument("--alias", help="the version this alias points at: the same as --version ALIAS")


SET_ALIAS_HELP = "move this alias onto the new version (the alias is made where missing)"


class _AliasNowSetAlias(argparse.Action):
    """--alias on a command that makes a version: it once moved the alias onto that version,
    where every other command's --alias picks the version an alias points at; refused, naming
    --set-alias, rather than read anew without a word."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: str | Sequence[Any] | None,
        option_string: str | None = None,
    ) -> None:
        raise argparse.ArgumentError(
            self,
            "this command makes a version and picks none; --set-alias NAME moves an alias onto the new "
            "version now (--alias picks the version an alias points at, on the commands that use one)",
        )


def add_set_alias_flag(sub: argparse.ArgumentParser, *, refuse_alias: bool) -> None:
    """--set-alias NAME, the alias moved onto the version the command makes; `refuse_alias` for
    a command that picks no version, whose --alias once meant what --set-alias does."""
    sub.add_argument("--set-alias", metavar="NAME", help=SET_ALIAS_HELP)
    if refuse_alias:
        sub.add_argument("--alias", action=_AliasNowSetAlias, help=argparse.SUPPRESS)


def add_other_spelling(sub: argparse.ArgumentParser, action: argparse.Action, spelling: str) -> None:
    """`spelling` taken as `action`'s flag and left out of the help, which names the one flag
    and says the other: jobs are listed by --state and runs by --status, and each takes both."""
    sub.add_argument(
        spelling,
        dest=action.dest,
        action=type(action),
        # No type reads the text as given, as str does.
        type=action.type or str,
        choices=action.choices,
        metavar=action.metavar,
        help=argparse.SUPPRESS,
    )


def picked_version(args: argparse.Namespace) -> int | str | None:
    """The version `add_version_flags`' flags picked: a number, an alias, or None for the default."""
    alias: str | None = getattr(args, "alias", None)
    return args.version if args.version is not None else alias


def picked_number_or_alias(args: argparse.Namespace) -> tuple[int | None, str | None]:
    """`picked_version` as the (version, alias) pair the SDK's predict and explain take."""
    picked = picked_version(args)
    return (None, picked) if isinstance(picked, str) else (picked, None)


def pointed_version(text: str) -> int | str:
    """argparse's type for the version `models alias` points an alias at: its number, also as
    the tables show it ("v6"); another word is returned as it is, an alias the command refuses
    naming the number it points at."""
    number = text.removeprefix("v") if text.startswith("v") and is_digits(text[1:]) else text
    return version_number(number) if is_digits(number.removeprefix("-")) else text


def model_name(text: str) -> str:
    """argparse's type for MODEL on a command that picks a version with --version or --alias:
    "model:6", as a dataset is named, is refused saying which flag names the version (no model's
    name holds a ":", and the daemon's refusal would say only that this is no valid name), and so
    is MLflow's "models:/NAME@ALIAS", saying the flags that name its version."""
    if text.startswith(MODEL_URI_PREFIX):
        try:
            model, named = model_uri_parts(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{_shown(text)!r} is no model URI this reads: write the model's name alone, and "
                "--version N or --alias NAME for its version (MLflow's stages are aliases: --alias staging)"
            ) from None
        flag = (
            "" if named is None else f" --version {named}" if isinstance(named, int) else f" --alias {named}"
        )
        raise argparse.ArgumentTypeError(
            f"{_shown(text)!r} is MLflow's model URI; here the model comes alone and a flag picks its "
            f"version: write `{model}{flag}`"
        )
    model, colon, version = text.partition(":")
    if not colon:
        return text
    if not model or not version:
        missing = "no model before it" if not model else "no version after it"
        raise argparse.ArgumentTypeError(
            f"{_shown(text)!r} is no model's name: a model's name holds no ':', and this names "
            f"{missing}; give the model's name alone (--version N|ALIAS picks a version)"
        )
    fix = (
        f"to name version {version}, write `--version {version}`"
        if is_digits(version)
        else f"to name the version alias {version} points at, write `--alias {version}`"
    )
    raise argparse.ArgumentTypeError(
        f"{_shown(text)!r} names a model and a version together; {fix} after the model {model!r}"
    )


def _digits_number(text: str) -> int | None:
    """`text` as a number in 0..INT64_MAX written in digits 0-9; None for anything else."""
    try:
        return whole_number(text)
    except ValueError:
        return None


def _shown(text: str) -> str:
    return text if len(text) <= 40 else text[:40] + "..."


# The daemon's range for each ServingConfig field `tessera load` sets (its serving pool's
# CONFIG_LIMITS, which a test holds this to): a value past it is a usage error in flags' words.
SERVING_LIMITS = {
    "instances": (1, 64),
    "max_batch_size": (1, 65536),
    "max_queue_delay_us": (0, 10_000_000),
    "max_queue_size": (1, 1_000_000),
    "warmup_runs": (0, 1000),
    "intra_op_threads": (0, 1024),
}


def serving_option(field: str) -> Callable[[str], int]:
    """argparse's type for a `tessera load` option filling ServingConfig's `field`: in the
    daemon's range, or 0 for the daemon's default where the range starts at 1, as the daemon takes it."""
    low, high = SERVING_LIMITS[field]

    def parse(text: str) -> int:
        number = _digits_number(text)
        if number is None or not (low <= number <= high or (low and number == 0)):
            default = " (0 for the daemon's default)" if low else ""
            raise argparse.ArgumentTypeError(f"must be in {low}..{high}{default}, got {_shown(text)!r}")
        return number

    return parse


def whole(low: int = 0, high: int = INT64_MAX) -> Callable[[str], int]:
    """argparse's type for versions, counts and sequence numbers in low..high, the range of the
    proto field the option fills: past an int32 field's, protobuf fails with a bare "Value out
    of range" (and int() also reads "٣" as 3)."""

    def parse(text: str) -> int:
        try:
            value = whole_number(text)
        except ValueError:
            value = None
        if value is None or not low <= value <= high:
            shown = text if len(text) <= 40 else text[:40] + "..."
            raise argparse.ArgumentTypeError(
                f"must be a whole number in {low}..{high} written in digits 0-9, got {shown!r}"
            )
        return value

    return parse


def output_index(text: str) -> int:
    """argparse's type for explain's --target, the output index: the daemon's address, which
    `tessera --target` takes before the command, is pointed there."""
    try:
        return whole(high=INT32_MAX)(text)
    except argparse.ArgumentTypeError as err:
        if ":" in text:
            raise argparse.ArgumentTypeError(
                f"{err}: explain's --target is the output index (class) to explain; the daemon's "
                "address goes before the command, `tessera --target HOST:PORT explain ...`"
            ) from None
        raise


def dataset(text: str) -> str:
    """argparse's type for NAME[:VERSION]."""
    try:
        dataset_ref(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None
    return text


def daemon_target(text: str) -> str:
    """argparse's type for --target (and TESSERA_TARGET): `check_target`'s."""
    try:
        return check_target(text, f"here or in env {TARGET_ENV}", "--tls")
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def member(text: str) -> str:
    """argparse's type for an ensemble member MODEL:VERSION."""
    try:
        member_pair(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None
    return text


def route(text: str) -> tuple[int | str, int]:
    """argparse's type for a deployment route VERSION=PERCENT or ALIAS=PERCENT."""
    target, sep, weight = text.partition("=")
    if not sep or not target or not is_digits(weight):
        raise argparse.ArgumentTypeError(
            f"route {text!r}: write VERSION=PERCENT or ALIAS=PERCENT, e.g. 3=90 staging=10"
        )
    return version_or_alias(target), int(weight)


def key_value(text: str) -> tuple[str, str]:
    """argparse's type for a param or tag KEY=VALUE."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"{text!r}: write KEY=VALUE")
    return key, value


def spec_setting(text: str) -> tuple[tuple[str | int, ...], Any, str]:
    """argparse's type for `train --set KEY=VALUE`: (KEY's path, VALUE, the words that set it)."""
    try:
        path, value = parse_setting(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None
    return path, value, f"--set {text}"


def once_each(pairs: Iterable[tuple[str, _V]] | None, flag: str) -> dict[str, _V]:
    """The pairs a repeated flag gave, as a dict; UsageError for a key given twice, whose first
    value a dict would drop without a word."""
    given: dict[str, _V] = {}
    for key, value in pairs or ():
        if key in given:
            raise UsageError(f"{flag} {key} is given twice; give each once")
        given[key] = value
    return given


def split(text: str) -> tuple[str, float]:
    """argparse's type for a dataset split NAME=FRACTION."""
    name, sep, fraction = text.partition("=")
    try:
        value = float(fraction)
    except ValueError:
        value = math.nan
    if not sep or not name or not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text!r}: write NAME=FRACTION, e.g. train=0.8")
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(
            f"{text!r}: the fraction must be above 0 and at most 1, e.g. train=0.8"
        )
    return name, value


def weight_list(text: str) -> list[float]:
    """argparse's type for ensemble weights "2,1,1": the daemon's rule (finite, >= 0, a positive
    sum), so that a weight it would refuse is a usage error before any member is looked up."""
    try:
        weights = [float(part) for part in text.split(",")]
    except ValueError:
        weights = [math.nan]
    if not all(math.isfinite(weight) and weight >= 0 for weight in weights) or sum(weights) <= 0:
        raise argparse.ArgumentTypeError(
            f"must be finite numbers >= 0 with a positive sum, separated by commas, like 2,1,1; got {text!r}"
        )
    return weights


def finite(text: str) -> float:
    """argparse's type for a plain number: float() also reads "nan" and "inf" (and "1e400" as
    inf), which no input value or threshold means."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, like 0 or -1.5; got {text!r}")
    return value


def timeout_seconds(text: str) -> float:
    """argparse's type for --timeout (and TESSERA_TIMEOUT_S): seconds above 0, at most what the
    SDK takes (past it gRPC fails every call at once)."""
    return _deadline_seconds(text, "a call", "--timeout")


def transfer_timeout_seconds(text: str) -> float:
    """argparse's type for --transfer-timeout (and TESSERA_TRANSFER_TIMEOUT_S), as timeout_seconds."""
    return _deadline_seconds(text, "an upload, download or backup", "--transfer-timeout")


def _deadline_seconds(text: str, what: str, flag: str) -> float:
    value = parse_seconds(text)
    if not 0 < value <= MAX_TIMEOUT_S:
        raise argparse.ArgumentTypeError(
            f"seconds {what} may take must be above 0 and at most {MAX_TIMEOUT_TEXT}, "
            f"got {text!r} from {source(text, flag)}"
        )
    return value


def keepalive_seconds(text: str) -> float:
    """argparse's type for --keepalive (and TESSERA_KEEPALIVE_S): 0, or seconds in the SDK's range."""
    try:
        return check_keepalive(parse_seconds(text), text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"{err} from {source(text, '--keepalive')}") from None


def metric_condition(text: str) -> training_pb2.MetricFilter:
    """argparse's type for --metric KEY<VALUE (or <=, >, >=, =, !=)."""
    try:
        return parse_metric_condition(text)
    except RunFilterError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def window_sizes(text: str) -> list[int]:
    """An occlusion window as "1,1,4,4,4"."""
    try:
        sizes = [whole_number(part) for part in text.split(",")]
    except ValueError:
        sizes = []
    if not sizes or max(sizes) > INT32_MAX:
        raise argparse.ArgumentTypeError(
            f"must be sizes separated by commas, each 0..{INT32_MAX}, like 1,1,4,4,4; got {text!r}"
        )
    return sizes
