"""Request and response bodies of the Personalizer API, strictly validated at the edge.

Features are what VW's JSON parser reads: an object's keys are namespaces or features; strings are
categorical, numbers numeric, booleans present or absent, arrays hold numbers or objects. Anything VW
would misread (arrays of strings, keys starting with ``_``, which VW reserves, and object or array names
starting with a non-ASCII character, which VW cannot index as namespaces) is refused here with a 400.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from functools import partial
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    GetJsonSchemaHandler,
    RootModel,
    StringConstraints,
    ValidationError,
)

from .errors import ApiError
from .rules import Rules
from .settings import Policy

MAX_NUMBER = 1e15  # VW computes in float32; larger values overflow under quadratic interactions
MAX_DEPTH = 8

MAX_ID = 256
# The one rule for every id (event, action, slot, evaluation, feature importance): 1-256 characters, no C0 or C1
# control character or DEL, and routable: split at '/', a segment is never '.' or '..' (URL clients remove
# such segments before sending, RFC 3986 5.2.4) and one segment at least is not empty (routing needs a
# character other than '/'). Ids in paths are percent-encoded, '/' included, as the SDKs do.
_CHAR = r"[^/\x00-\x1f\x7f-\x9f]"
_NOT_DOT = r"[^/.\x00-\x1f\x7f-\x9f]"
_SEGMENT = rf"(?:{_CHAR}*{_NOT_DOT}{_CHAR}*|\.{{3,}})"
ID_PATTERN = rf"^/*{_SEGMENT}(?:/+{_SEGMENT})*/*$"
ID_RULE = "an id has 1-256 characters, no control characters, and no '.' or '..' between slashes"
_ID = re.compile(ID_PATTERN)

Id = Annotated[str, StringConstraints(min_length=1, max_length=MAX_ID, pattern=ID_PATTERN)]


def is_id(value: Any) -> bool:
    """Whether ``value`` is a valid id (the rule of :data:`Id`, for ids outside a pydantic model)."""
    return type(value) is str and len(value) <= MAX_ID and _ID.fullmatch(value) is not None


def _check_object(obj: dict[str, Any], where: str, depth: int) -> int:
    """Refuse what VW would misread (a ValueError says where); the number of keys, nested ones included."""
    # On every Rank's every feature: plain values are settled with exact type tests before anything else.
    if depth > MAX_DEPTH:
        raise ValueError(f"{where}: features nest deeper than {MAX_DEPTH} levels")
    keys = len(obj)
    for key, value in obj.items():
        if not key or key[0] == "_":
            raise ValueError(f"{where}: feature name {key!r} is empty or starts with '_' (reserved)")
        kind = type(value)
        if kind is str or kind is bool or value is None:
            continue
        if kind is int or kind is float:
            if not -MAX_NUMBER <= value <= MAX_NUMBER:  # exact for integers of any size
                raise ValueError(f"{where}.{key}: numbers must be finite and within ±1e15")
            continue
        if not key[0].isascii():
            # VW takes a namespace's index from the first byte of its name; with a non-ASCII lead byte
            # (>= 0x80) vowpalwabbit 9.11 corrupts memory and the worker dies (SIGSEGV/SIGABRT).
            raise ValueError(f"{where}: the name {key!r} of an object or array must start with an ASCII character")
        if kind is dict:
            keys += _check_object(value, f"{where}.{key}", depth + 1)
        elif kind is list:
            keys += _check_array(value, f"{where}.{key}", depth)
        else:
            raise ValueError(f"{where}.{key}: unsupported value")
    return keys


def _check_array(values: list[Any], where: str, depth: int) -> int:
    if all(type(v) is int or type(v) is float for v in values):
        for i, v in enumerate(values):
            if not -MAX_NUMBER <= v <= MAX_NUMBER:
                raise ValueError(f"{where}[{i}]: numbers must be finite and within ±1e15")
        return 0
    if all(type(v) is dict for v in values):
        return sum(_check_object(v, f"{where}[{i}]", depth + 1) for i, v in enumerate(values))
    raise ValueError(f"{where}: an array holds only numbers or only objects")


def check_features(obj: dict[str, Any], where: str) -> None:
    """Refuse a feature object VW would misread (a ValueError says where); imports check lines with it."""
    _check_object(obj, where, 0)


def _features(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    for i, obj in enumerate(items):
        _check_object(obj, f"[{i}]", 0)
    return items


def _feature_keys(items: list[dict[str, Any]]) -> int:
    """The keys of feature objects that pass the checks of :data:`Features`, nested ones included; a ValueError
    (its place left unsaid: :func:`validate_json` then takes the checked path, whose error says it) otherwise."""
    keys = 0
    for obj in items:
        keys += _check_object(obj, "", 0)
    return keys


class Documented:
    """Annotation metadata: the JSON Schema of a type, built by ``build(ref)``, where ``ref(model)`` gives a
    ``$ref`` to a model's schema (added to the document's schemas). For what is checked by code, not by the
    type's own schema (features, policies validated one by one)."""

    def __init__(self, build: Callable[[Callable[[type[BaseModel]], dict[str, Any]]], dict[str, Any]]):
        self.build = build

    def __get_pydantic_json_schema__(self, core_schema: Any, handler: GetJsonSchemaHandler) -> dict[str, Any]:
        # generate_inner, not the handler: the handler would inline the model instead of referring to it
        return self.build(lambda model: handler.generate_json_schema.generate_inner(model.__pydantic_core_schema__))


_NUMBER = {"type": "number", "minimum": -MAX_NUMBER, "maximum": MAX_NUMBER}
_PLAIN = {"anyOf": [{"type": ["string", "boolean", "null"]}, _NUMBER]}


def _feature_object(depth: int, ref: Callable[[type[BaseModel]], dict[str, Any]]) -> dict[str, Any]:
    values = [_PLAIN, {"type": "array", "items": _NUMBER}]
    if depth < MAX_DEPTH:
        deeper = ref(_FEATURE_OBJECTS[depth + 1])
        values += [deeper, {"type": "array", "items": deeper}]
    return {
        "type": "object",
        "description": "Feature names are not empty and do not start with '_'; the name of an object or array "
        "starts with an ASCII character.",
        "propertyNames": {"minLength": 1, "pattern": "^[^_]"},
        "patternProperties": {"^[\\x00-\\x7f]": {"anyOf": values}},
        "additionalProperties": _PLAIN,  # a name starting with a non-ASCII character
    }


# FeatureObject0 to FeatureObject8: what check_features accepts at each nesting level (JSON Schema has no depth
# limit of its own, so one schema per level). For the document only: features are checked by _check_object.
_FEATURE_OBJECTS = [
    type(
        f"FeatureObject{depth}",
        (RootModel[dict[str, Any]],),
        {
            "__module__": __name__,
            "__get_pydantic_json_schema__": classmethod(
                lambda cls, core_schema, handler, depth=depth: Documented(
                    partial(_feature_object, depth)
                ).__get_pydantic_json_schema__(core_schema, handler)
            ),
        },
    )
    for depth in range(MAX_DEPTH + 1)
]

Features = Annotated[
    list[dict[str, Any]],
    AfterValidator(_features),
    Documented(lambda ref: {"type": "array", "items": ref(_FEATURE_OBJECTS[0])}),
]


class Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")


class RankableAction(Strict):
    id: Id = Field(description="Action id, 1-256 characters, no control characters.")
    features: Features = Field(default_factory=list, description="Feature objects of the action.")


class RankRequest(Strict):
    contextFeatures: Features = Field(default_factory=list, description="Feature objects of the context.")
    actions: list[RankableAction] = Field(
        min_length=1,
        description="Candidate actions with different ids, at most the loop's maxActions (500 by default).",
    )
    excludedActions: list[Id] = Field(default_factory=list, description="Action ids not to choose this time.")
    eventId: Id | None = Field(None, description="Unique id of this decision; generated when absent.")
    deferActivation: bool = Field(False, description="Learn from this event only after Activate.")


class RankedAction(BaseModel):
    id: str
    probability: float


class RankResponse(BaseModel):
    eventId: str
    rewardActionId: str | None = Field(description="The action to show; null when no action was eligible.")
    ranking: list[RankedAction] = Field(
        description="Every action: the chosen one first, then eligible ones by probability, "
        "then excluded ones with probability 0."
    )


class RewardRequest(Strict):
    value: float = Field(ge=-1, le=1, description="Reward for the event's rewardActionId, -1 to 1.")


MAX_SLOTS = 50


class SlotRequest(Strict):
    id: Id = Field(description="Slot id, unique within the request.")
    features: Features = Field(default_factory=list, description="Feature objects of the slot (e.g. its position).")
    excludedActions: list[Id] = Field(default_factory=list, description="Action ids not to put in this slot.")
    baselineAction: Id = Field(
        description="The action the application would put in this slot without the ranker: served in "
        "Apprentice mode and the Baseline of offline evaluation. One of the request's actions, different "
        "for every slot, never in the slot's excludedActions."
    )


class MultiSlotRankRequest(Strict):
    contextFeatures: Features = Field(default_factory=list, description="Feature objects of the context.")
    actions: list[RankableAction] = Field(min_length=1, description="Candidate actions, shared by the slots.")
    slots: list[SlotRequest] = Field(
        min_length=1, max_length=MAX_SLOTS, description="The places to fill, in order of importance."
    )
    eventId: Id | None = Field(None, description="Unique id of this decision; generated when absent.")
    deferActivation: bool = Field(False, description="Learn from this event only after Activate.")


class SlotResponse(BaseModel):
    id: str
    rewardActionId: str | None = Field(description="The action for this slot; null when none was left for it.")


class MultiSlotRankResponse(BaseModel):
    eventId: str
    slots: list[SlotResponse] = Field(description="Every requested slot, in request order.")


class SlotReward(Strict):
    slotId: Id = Field(description="A slot of the event.")
    value: float = Field(ge=-1, le=1, description="Reward for the slot's rewardActionId, -1 to 1.")


class MultiSlotRewardRequest(Strict):
    reward: list[SlotReward] = Field(min_length=1, max_length=MAX_SLOTS, description="One reward per slot at most.")


class JobRequest(BaseModel):
    """A feature importance's request (an evaluation's adds policies); fields this service does not use are
    ignored, as Personalizer's other fields are."""

    model_config = ConfigDict(strict=True, extra="allow")
    name: str = Field(min_length=1, description="A name for people.")
    startTime: str = Field(
        json_schema_extra={"format": "date-time"},
        description="Start of the decisions' time range (ISO 8601; UTC when without offset), before endTime.",
    )
    endTime: str = Field(json_schema_extra={"format": "date-time"}, description="End of the time range, excluded.")


MAX_POLICIES = 20
MAX_SEGMENT_PATHS = 10
# an integer, as JSON Schema has it: 100.0 is one too (a strict int alone refuses it; strings and booleans stay out)
WholeNumber = Annotated[int, BeforeValidator(lambda v: int(v) if type(v) is float and v.is_integer() else v)]
# a dotted path of the logged context: non-empty parts separated by dots
SegmentPath = Annotated[str, StringConstraints(min_length=1, max_length=256, pattern=r"^[^.]+(\.[^.]+)*$")]


class EvaluationRequest(JobRequest):
    # each policy is validated as a Policy on its own, so that its errors name it (InvalidPolicyConfiguration)
    policies: Annotated[
        list[dict[str, Any]] | None,
        Documented(
            lambda ref: {"anyOf": [{"type": "array", "maxItems": MAX_POLICIES, "items": ref(Policy)}, {"type": "null"}]}
        ),
    ] = Field(None, max_length=MAX_POLICIES, description="Policies to replay besides Online, Baseline and Random.")
    enablePolicyOptimization: bool = Field(False, description="Also search VW arguments and replay the best found.")
    # extensions of Personalizer's request: ranker evaluate's --by, --min-segment-events and --rules
    segmentBy: list[SegmentPath] | None = Field(
        None,
        max_length=MAX_SEGMENT_PATHS,
        description="Dotted paths of the logged context (such as account.plan): each adds every policy's result "
        "per segment value, in the result's segments.",
    )
    minSegmentEvents: WholeNumber = Field(
        100, ge=1, le=2**31, description="Segments with fewer events are pooled into one named other."
    )
    rules: Rules | None = Field(
        None,
        description="Business rules of the shape of a loop's rules (entitlements, availability, priority, "
        "discovery): the decisions are also replayed through them, in the result's rulesWhatIf. Single-slot "
        "loops only.",
    )


class EvaluationSubmission(EvaluationRequest):
    id: Id = Field(None, description="The evaluation's id; generated when absent.")  # type: ignore[assignment]


class ApplyFromEvaluationRequest(BaseModel):
    model_config = ConfigDict(strict=True, extra="allow")
    evaluationId: Id = Field(description="A Succeeded evaluation of this loop.")
    policyName: str = Field(min_length=1, description="One of its policies (Online included).")


# Only a \uD800-\uDFFF escape can put a surrogate into the decoded text; UTF-8 bytes cannot encode one.
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


def parse_json(raw: bytes) -> Any:
    """Decode a JSON body, refusing non-UTF-8 bytes, unpaired surrogates, NaN/Infinity literals and a key
    repeated in one object (parsers differ on which value wins, so the caller and ranker could disagree)."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ApiError(400, "BadRequest", f"the body is not UTF-8: {exc.reason} at byte {exc.start}") from exc
    try:
        value = json.loads(text, parse_constant=_no_constant, object_pairs_hook=_object)
        if _SURROGATE_ESCAPE.search(text):
            _check_unicode(value)
    except RecursionError as exc:
        raise ApiError(400, "BadRequest", "the body nests too deeply") from exc
    except UnicodeEncodeError as exc:
        raise ApiError(400, "BadRequest", "the body holds an unpaired surrogate escape (\\uD800-\\uDFFF)") from exc
    except ValueError as exc:
        raise ApiError(400, "BadRequest", f"the body is not valid JSON: {exc}") from exc
    return value


def _object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise ApiError(400, "BadRequest", f"the key {key!r} appears twice in one object of the body")
            seen.add(key)
    return obj


def _check_unicode(value: Any) -> None:
    # A lone surrogate cannot be written as UTF-8, so neither SQLite nor VW could take it.
    json.dumps(value, ensure_ascii=False).encode("utf-8")


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


# What parse_json refuses and pydantic's parser takes: NaN/Infinity literals and escapes of unpaired surrogates.
_SURROGATE_BYTES = re.compile(rb"\\u[dD][89a-fA-F]")


def _parsable(raw: bytes) -> bool:
    """Whether ``raw`` holds nothing that :func:`parse_json` refuses by itself (its key counts aside)."""
    if b"N" in raw and b"NaN" in raw or b"I" in raw and b"Infinity" in raw:  # one byte first: memchr's speed
        return False
    return _SURROGATE_BYTES.search(raw) is None


def _quoted_keys(raw: bytes) -> int | None:
    """The keys of ``raw`` counted as a quote and a colon side by side, or None where that count could be wrong:
    an escaped quote (in a string, a quote is always escaped), whitespace before a colon."""
    if b'\\"' in raw or b" :" in raw or b"\n:" in raw or b"\t:" in raw or b"\r:" in raw:
        return None
    return raw.count(b'":')


# The one pass validates with these: the models' own fields, but feature lists unchecked by pydantic (a call of
# Python per list), so that validate_json checks them all in one walk, which also counts their keys. Each has
# ``_keys``: the keys the body gave it, its nested models' and feature objects' included (a ValueError when a
# feature check fails).
Unchecked = list[dict[str, Any]]


class _UncheckedAction(RankableAction):
    features: Unchecked = Field(default_factory=list)

    def _keys(self) -> int:
        return len(self.__pydantic_fields_set__) + _feature_keys(self.features)


class _UncheckedRank(RankRequest):
    contextFeatures: Unchecked = Field(default_factory=list)
    actions: list[_UncheckedAction] = Field(min_length=1)

    def _keys(self) -> int:
        keys = len(self.__pydantic_fields_set__) + _feature_keys(self.contextFeatures)
        for action in self.actions:  # _UncheckedAction._keys, inlined
            keys += len(action.__pydantic_fields_set__) + _feature_keys(action.features)
        return keys


class _UncheckedSlot(SlotRequest):
    features: Unchecked = Field(default_factory=list)

    def _keys(self) -> int:
        return len(self.__pydantic_fields_set__) + _feature_keys(self.features)


class _UncheckedMultiSlotRank(MultiSlotRankRequest):
    contextFeatures: Unchecked = Field(default_factory=list)
    actions: list[_UncheckedAction] = Field(min_length=1)
    slots: list[_UncheckedSlot] = Field(min_length=1, max_length=MAX_SLOTS)

    def _keys(self) -> int:
        keys = len(self.__pydantic_fields_set__) + _feature_keys(self.contextFeatures)
        for member in (*self.actions, *self.slots):
            keys += member._keys()
        return keys


class _UncheckedReward(RewardRequest):
    def _keys(self) -> int:
        return len(self.__pydantic_fields_set__)


class _UncheckedMultiSlotReward(MultiSlotRewardRequest):
    def _keys(self) -> int:
        return len(self.__pydantic_fields_set__) + sum(len(r.__pydantic_fields_set__) for r in self.reward)


_ONE_PASS: dict[type[BaseModel], type[BaseModel]] = {
    RankRequest: _UncheckedRank,
    MultiSlotRankRequest: _UncheckedMultiSlotRank,
    RewardRequest: _UncheckedReward,
    MultiSlotRewardRequest: _UncheckedMultiSlotReward,
}


def validate_json(model: type[BaseModel], raw: bytes, code: str) -> Any:
    """``validate(model, parse_json(raw), code)``, in one pass where it can: pydantic's parser on the raw bytes.

    A body it accepts (as an instance of a subclass of ``model``, the features checked after it) is taken only
    when the text holds as many keys as the result (no key repeated in an object: pydantic's parser would keep
    the last) and nothing :func:`parse_json` refuses by itself; any other body, any failure, and any model
    without a one-pass form goes through :func:`parse_json` and :func:`validate`, so every error answer is
    theirs, byte for byte.
    """
    unchecked = _ONE_PASS.get(model)
    if unchecked is not None and _parsable(raw):
        try:
            value = unchecked.model_validate_json(raw)
            keys = value._keys()  # type: ignore[attr-defined]
        except ValueError:  # ValidationError included
            keys = -1
        # Every key of the text is followed by a colon outside strings, so colons >= keys in the text >= keys
        # kept; equal counts leave no key repeated. Colons in strings (times, addresses): keys counted as '":'.
        if keys >= 0 and (keys == raw.count(b":") or keys == _quoted_keys(raw)):
            return value
    return validate(model, parse_json(raw), code)


def validate(model: type[BaseModel], data: Any, code: str) -> Any:
    """Validate ``data`` against ``model``, turning every failure into one 400 with details."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        details = [
            {
                "code": code,
                "message": err["msg"],
                "target": ".".join(str(p) for p in err["loc"]) or None,
            }
            for err in exc.errors(include_url=False, include_input=False)
        ]
        first = details[0]
        message = f"{first['target']}: {first['message']}" if first["target"] else first["message"]
        raise ApiError(400, code, message, target=first["target"], details=details) from exc
