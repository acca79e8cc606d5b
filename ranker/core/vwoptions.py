"""The VW options a policy may use, and the options a model file brings with it.

VW has options that read or write files (``-f``, ``--readable_model``, ``--extra_metrics``, ``--dictionary``,
...) and it takes options from two places: the arguments it starts with and the header of a model it loads
(VW merges the options stored there with its arguments). A policy is learning arguments and nothing else, so
both places are held to one allow-list of options with the type of their values, checked on exactly the words
VW receives:

- :func:`split` reads policy arguments into the words VW gets. VW's command line splitting reads quotes and
  backslashes and ours would have to agree with it character for character; instead they are refused, so a
  word is what lies between spaces, for us and for VW alike, and callers hand VW ``" ".join(words)``.
- :func:`check` accepts a word only as an allowed option or as the value of the option before it; a value that
  starts with ``-`` must be a number, so no value can be read by VW as an option of its own.
- :func:`model_header` reads a VW model file's header (the options, the weight table's size) without VW, so a
  model's options are checked before any VW loads it.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Callable
from dataclasses import dataclass

# The largest weight table a policy may ask for (-b): 2^24 weights, up to a few hundred MB per workspace with
# the per-weight state of adaptive, normalized updates and bagging; every worker and the trainer holds one.
MAX_BITS = 24
# The cap on ensembles and other counts that multiply a workspace's memory and time per example.
MAX_COUNT = 100


def _number(low: float = -math.inf, high: float = math.inf) -> Callable[[str], None]:
    def check(value: str) -> None:
        try:
            number = float(value)
        except ValueError:
            raise ValueError("takes a number") from None
        if not math.isfinite(number) or not low <= number <= high:
            raise ValueError(f"takes a number from {low:g} to {high:g}")

    return check


def _integer(low: int, high: int) -> Callable[[str], None]:
    def check(value: str) -> None:
        if not value.lstrip("-").isdigit() or not low <= int(value) <= high:
            raise ValueError(f"takes a whole number from {low} to {high}")

    return check


def _choice(*choices: str) -> Callable[[str], None]:
    def check(value: str) -> None:
        if value not in choices:
            raise ValueError(f"takes one of {', '.join(choices)}")

    return check


def _namespaces(value: str) -> None:
    """Namespace letters of interactions and ``--ignore``: ``::`` (all), ``ui``, ``abc``."""
    if value.startswith("-"):
        raise ValueError("takes namespace letters, not an option")


_ANY = _number()
_RATE = _number(0, math.inf)
_SHARE = _number(0, 1)

# Each allowed option with the check of its value, or None for an option without one. Aliases VW knows are
# listed under each name. Options VW itself writes into a model's header are here too (--cb_adf, --csoaa_ldf,
# --csoaa_rank, --cb_sample, --learning_rate).
OPTIONS: dict[str, Callable[[str], None] | None] = {
    # the contextual bandit reductions
    "--cb_explore_adf": None,
    "--ccb_explore_adf": None,
    "--cb_adf": None,
    "--cb_sample": None,
    "--csoaa_ldf": _choice("multiline", "m", "mc"),
    "--csoaa_rank": None,
    "--all_slots_loss": None,
    "--cb_type": _choice("ips", "dm", "dr", "mtr", "sm"),
    "--cb_min_cost": _ANY,
    "--cb_max_cost": _ANY,
    # exploration
    "--epsilon": _SHARE,
    "--first": _integer(1, 1_000_000),
    "--first_only": None,
    "--bag": _integer(1, MAX_COUNT),
    "--cover": _integer(1, MAX_COUNT),
    "--psi": _RATE,
    "--nounif": None,
    "--greedify": None,
    "--softmax": None,
    "--lambda": _ANY,
    "--squarecb": None,
    "--gamma_scale": _RATE,
    "--gamma_exponent": _ANY,
    "--elim": None,
    "--mellowness": _RATE,
    "--regcb": None,
    "--regcbopt": None,
    "--rnd": _integer(1, MAX_COUNT),
    "--rnd_alpha": _RATE,
    "--rnd_invlambda": _RATE,
    # features and interactions
    "-q": _namespaces,
    "--quadratic": _namespaces,
    "--cubic": _namespaces,
    "--interactions": _namespaces,
    "--ignore": _namespaces,
    "--ignore_linear": _namespaces,
    "--keep": _namespaces,
    "--noconstant": None,
    "-b": _integer(1, MAX_BITS),
    "--bit_precision": _integer(1, MAX_BITS),
    "--hash": _choice("strings", "all"),
    "--hash_seed": _integer(0, 2**32 - 1),
    "--random_seed": _integer(0, 2**32 - 1),
    # learning
    "-l": _RATE,
    "--learning_rate": _RATE,
    "--power_t": _RATE,
    "--initial_t": _RATE,
    "--decay_learning_rate": _RATE,
    "--l1": _RATE,
    "--l2": _RATE,
    "--no_bias_regularization": None,
    "--adaptive": None,
    "--normalized": None,
    "--invariant": None,
    "--sgd": None,
    "--coin": None,
    "--ftrl": None,
    "--ftrl_alpha": _RATE,
    "--ftrl_beta": _RATE,
    "--pistol": None,
    "--loss_function": _choice("squared", "logistic", "hinge", "quantile", "poisson", "classic", "expectile"),
    "--quantile_tau": _SHARE,
    "--link": _choice("identity", "logistic", "glf1", "poisson"),
    "--min_prediction": _ANY,
    "--max_prediction": _ANY,
    # how each use reads examples and whether it learns: set by that use, dropped from a policy's arguments
    "--quiet": None,
    "--dsjson": None,
    "--json": None,
    "-t": None,
    "--testonly": None,
}


def split(arguments: str) -> list[str]:
    """The words VW gets for ``arguments``: split at spaces; quotes, backslashes and characters other than
    printable ASCII are refused (a ValueError), so VW cannot read the words differently."""
    for ch in arguments:
        if ch in "\"'\\" or not (" " <= ch <= "~"):
            raise ValueError(f"VW arguments may not hold {ch!r}: write options and values separated by spaces")
    return arguments.split()


def check(words: list[str]) -> None:
    """A ValueError naming the first word that is not an allowed option or a valid value of one.

    Options take their value as the next word, ``--name=value`` or, for a one-letter option, joined to it
    (``-q::``, as VW reads them)."""
    i = 0
    while i < len(words):
        word = words[i]
        if word.startswith("--"):
            name, equals, value = word.partition("=")
            joined = bool(equals)
        elif word.startswith("-") and len(word) > 2:
            name, value, joined = word[:2], word[2:], True
        else:
            name, value, joined = word, "", False
        if name not in OPTIONS:
            if not name.startswith("-"):
                raise ValueError(f"{word!r} is not a VW option; a value follows the option it belongs to")
            raise ValueError(f"VW option {name} is not one a policy may use")
        value_check = OPTIONS[name]
        if value_check is None:
            if joined:
                raise ValueError(f"VW option {name} takes no value")
            i += 1
            continue
        if not joined:
            if i + 1 == len(words):
                raise ValueError(f"VW option {name} needs a value")
            value = words[i + 1]
            i += 1
        if value.startswith("-"):
            try:
                float(value)
            except ValueError:
                raise ValueError(f"VW option {name} needs a value, not {value!r}") from None
        try:
            value_check(value)
        except ValueError as exc:
            raise ValueError(f"VW option {name} {exc} (not {value!r})") from None
        i += 1


def checked(arguments: str) -> str:
    """``arguments`` as VW gets them (words joined by one space), after :func:`split` and :func:`check`."""
    words = split(arguments)
    check(words)
    return " ".join(words)


@dataclass(frozen=True)
class ModelHeader:
    """What a VW model file says of itself before its weights."""

    version: str
    bits: int
    options: list[str]


def model_header(data: bytes) -> ModelHeader:
    """Read a VW model's header: its VW version, ``-b`` and the options VW will take from it when it loads it.

    The layout is VW 9's (``save_load_header``): length-prefixed version and model id, the byte ``m``, the label
    range, bits, lda, n-gram and skip counts (3 bytes an entry), the length-prefixed options, then a checksum.
    A ValueError when the bytes are not such a header.
    """
    pos = 0

    def take(size: int) -> bytes:
        nonlocal pos
        if size < 0 or pos + size > len(data):
            raise ValueError("the file ends inside the model header")
        chunk = data[pos : pos + size]
        pos += size
        return chunk

    def u32() -> int:
        return struct.unpack("<I", take(4))[0]

    def text(limit: int) -> str:
        size = u32()
        if not 0 < size <= limit:
            raise ValueError("not a VW model header")
        raw = take(size)
        if not raw.endswith(b"\0"):
            raise ValueError("not a VW model header")
        try:
            return raw[:-1].decode("ascii")
        except UnicodeDecodeError:
            raise ValueError("not a VW model header") from None

    version = text(32)
    text(4096)  # model id
    if take(1) != b"m":
        raise ValueError("not a VW model header (written by a VW older than 8.9?)")
    take(8)  # min and max label
    bits = u32()
    take(4)  # lda
    if u32() or u32():
        raise ValueError("the model uses n-grams or skips, which a policy may not")
    options = text(65536)
    return ModelHeader(version, bits, split(options))


def check_model(data: bytes) -> ModelHeader:
    """The model's header, if its options are ones a policy may use (a ValueError otherwise)."""
    header = model_header(data)
    if not 1 <= header.bits <= MAX_BITS:
        raise ValueError(f"the model's weight table has {header.bits} bits, more than {MAX_BITS}")
    try:
        check(header.options)
    except ValueError as exc:
        raise ValueError(f"the model's header carries options a policy may not use: {exc}") from None
    if "--cb_explore_adf" not in header.options:
        raise ValueError("not a contextual bandit model (its header has no --cb_explore_adf)")
    return header
