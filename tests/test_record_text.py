"""The decision record's text and the log row's action ids are what json writes for them, byte for byte: VW parses
the record, the log keeps it, and ``ranker export`` writes it, so any faster way of writing them must write the same."""

from __future__ import annotations

import json

from hypothesis import given
from hypothesis import strategies as st

from ranker.core import dsjson
from ranker.store import decision_row

C_JSON = '{"plan":"pro","_multi":[{"_id":"a","id":"a"},{"_id":"b","id":"b"}]}'
probabilities = st.one_of(
    st.floats(min_value=0, max_value=1),
    st.sampled_from([1e-5, 1e-7, 0.1, 1 / 3, 0.0, 1.0]),
    st.integers(0, 1),  # an imported record's
    st.sampled_from([float("nan"), float("inf")]),
)


def compact(value) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


@given(event_id=st.text(min_size=1), pmf=st.lists(probabilities, min_size=1, max_size=12), data=st.data())
def test_the_record_is_json_text_of_its_head_and_c(event_id, pmf, data):
    order = data.draw(st.permutations(range(len(pmf))))
    head = {
        "Version": "1",
        "EventId": event_id,
        "Timestamp": "2026-12-03T17:00:00.123456Z",
        "a": [i + 1 for i in order],
        "p": [pmf[i] for i in order],
    }
    line = dsjson.decision_line(event_id, head["Timestamp"], C_JSON, order, pmf)
    assert line == compact(head)[:-1] + ',"c":' + C_JSON + "}"
    assert dsjson.predict_line(C_JSON, len(pmf)) == compact({"a": list(range(1, len(pmf) + 1))})[:-1] + ',"c":' + (
        C_JSON + "}"
    )


@given(ids=st.lists(st.text(), max_size=8))
def test_the_rows_action_ids_are_json_text(ids):
    assert decision_row("e", "2026-12-03T17:00:00.000000Z", ids, deferred=False)["action_ids"] == json.dumps(ids)
