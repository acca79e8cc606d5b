"""No file written through VW options: policy arguments and model headers hold only options a policy may use.

An admin key changes what the loop learns; it must not make VW read or write files. VW takes options from its
arguments and from the header of a model it loads, so both are checked: here with the attacker's own requests,
a forged model header made with VW's checksum, and real VW processes showing the forgeries would work.
"""

from __future__ import annotations

import struct
import subprocess
import sys

import pytest
import vowpalwabbit
from conftest import KEYED_CONFIG
from hypothesis import given, settings
from hypothesis import strategies as st
from test_admin import ADMIN, V1, keyed, rank  # noqa: F401  (keyed is a fixture)

from ranker.cli import cli
from ranker.core import dsjson, vwoptions
from ranker.core.settings import Policy, load_settings
from ranker.evaluation.replay import Candidate
from ranker.serving.engine import vw_arguments


@pytest.mark.parametrize(
    "arguments, named",
    [
        ('--cb_explore_adf "-q :: -f VICTIM"', "'\"'"),  # a quoted word VW would read as several options
        ("--cb_explore_adf '-q :: --readable_model VICTIM'", '"\'"'),
        ("--cb_explore_adf -q :: --extra_metrics VICTIM", "--extra_metrics"),
        ("--cb_explore_adf --readable_model VICTIM", "--readable_model"),
        ("--cb_explore_adf --readable_model=VICTIM", "--readable_model"),
        ("--cb_explore_adf -q -f VICTIM", "-q needs a value"),  # a value that is an option
        ("--cb_explore_adf -fVICTIM", "-f"),
        ("--cb_explore_adf --epsilon 0.1 VICTIM", "victim.txt' is not a VW option"),
        ("--cb_explore_adf\t--invert_hash VICTIM", "'\\t'"),
        ("--cb_explore_adf -b 31", "-b takes a whole number from 1 to 24"),
        ("--cb_explore_adf --epsilon nan", "--epsilon takes a number"),
        ("--cb_explore_adf --noconstant=1", "--noconstant takes no value"),
    ],
)
def test_policy_arguments_with_options_a_policy_may_not_use_are_refused_and_write_nothing(
    keyed,  # noqa: F811
    tmp_path,
    arguments,
    named,
):
    client, service, _ = keyed
    victim = tmp_path / "victim.txt"
    arguments = arguments.replace("VICTIM", str(victim))
    response = client.put(f"{V1}/configurations/policy", json={"name": "p", "arguments": arguments}, headers=ADMIN)
    assert response.status_code == 400, response.get_json()
    error = response.get_json()["error"]
    assert error["code"] == "InvalidPolicyConfiguration" and named in error["message"], error
    assert service.store.read("SELECT count(*) AS n FROM loop_config")[0]["n"] == 0
    # an evaluation's policies and the CLI's candidates go through the same check
    window = {"startTime": "2030-01-01T00:00:00Z", "endTime": "2030-01-02T00:00:00Z"}
    body = {"name": "e", **window, "policies": [{"name": "p", "arguments": arguments}]}
    evaluation = client.put(f"{V1}/evaluations/e", json=body, headers=ADMIN)
    assert evaluation.status_code == 400 and evaluation.get_json()["error"]["target"] == "policies[0]"
    with pytest.raises(ValueError, match="'p'"):
        Candidate("p", arguments)
    rank(client, "still-serving")
    assert not victim.exists()


FRAGMENTS = st.sampled_from(
    ["--cb_explore_adf", "-q", "::", "-f", "/tmp/x", "--readable_model", "--extra_metrics", "--epsilon", "0.1",
     "-1", '"', "'", "\\", "=", " ", "\t", "-q::", "--epsilon=", "-b", "30", "--quiet", "-t", "-", "nan"]
)  # fmt: skip


@settings(max_examples=400, deadline=None)
@given(st.lists(FRAGMENTS, min_size=1, max_size=12), st.booleans())
def test_what_vw_gets_from_an_accepted_policy_holds_only_allowed_options(fragments, spaced):
    """Whatever text a policy is given, the words serving and learning hand VW (``vw_arguments``) pass the check
    when the policy was accepted: no word of theirs can be an option that reads or writes files."""
    text = (" " if spaced else "").join(fragments)
    try:
        policy = Policy(name="p", arguments=text)
    except ValueError:
        return
    words = vw_arguments(policy.arguments, 0.2).split(" ")
    vwoptions.check(words)
    assert not {"-f", "--readable_model", "--extra_metrics"} & set(words)


def test_the_cli_refuses_candidate_arguments_that_write_files(tmp_path, runner):
    victim = tmp_path / "metrics.json"
    data = tmp_path / "empty.json"
    data.write_text("")
    arguments = f"--cb_explore_adf --extra_metrics {victim}"
    for command in (["evaluate", "--arguments", arguments], ["importance", "--arguments", arguments]):
        result = runner.invoke(cli, [*command, "--file", str(data)])
        assert result.exit_code != 0 and "--extra_metrics is not one a policy may use" in result.output
    assert not victim.exists()


POLICIES = [
    "--cb_explore_adf --epsilon 0.2 --cb_type mtr -q ::",
    "--ccb_explore_adf --epsilon 0.2 --cb_type mtr -q ::",
    "--cb_explore_adf --epsilon 0.2 --power_t 0 -l 0.001 --cb_type mtr -q ::",
    "--cb_explore_adf --bag 3 --cb_type dr --interactions ab --cubic abc",
    "--cb_explore_adf --cover 3 --psi 0.1 --nounif --ignore x --ignore_linear y --noconstant",
    "--cb_explore_adf --softmax --lambda 4 -q:: -b 20 --l2 1e-6 --initial_t 1",
    "--cb_explore_adf --squarecb --gamma_scale 10 --elim --mellowness 0.1",
    "--cb_explore_adf --regcb",
    "--cb_explore_adf --first 2 --normalized --adaptive --invariant",
    "--cb_explore_adf --rnd 2 --rnd_alpha 0.1 --cb_type ips --epsilon=0.3 --coin",
    "--cb_explore_adf --cb_type sm --hash all --random_seed 3 --keep u --link identity",
]


@pytest.mark.parametrize("arguments", POLICIES)
def test_every_allowed_policy_loads_in_vw_and_its_models_header_passes_the_same_check(tmp_path, arguments):
    """The allow-list is no stricter than what it must be: the policies it lets through load in VW, and the
    options VW writes into their models' headers pass the import check."""
    assert Policy(name="p", arguments=arguments).arguments == arguments
    ws = vowpalwabbit.Workspace(arguments + " --quiet")
    ws.save(str(tmp_path / "m.vw"))
    ws.finish()
    header = vwoptions.check_model((tmp_path / "m.vw").read_bytes())
    assert header.version == vowpalwabbit.__version__
    assert ("--ccb_explore_adf" in header.options) == arguments.startswith("--ccb")


def murmur3_32(data: bytes, seed: int) -> int:
    """MurmurHash3 x86 32-bit, which VW uses for a model header's checksum (``uniform_hash``)."""
    c1, c2, h, n = 0xCC9E2D51, 0x1B873593, seed, len(data) // 4

    def mix(k: int) -> int:
        k = (k * c1) & 0xFFFFFFFF
        k = ((k << 15) | (k >> 17)) & 0xFFFFFFFF
        return (k * c2) & 0xFFFFFFFF

    for (k,) in struct.iter_unpack("<I", data[: n * 4]):
        h ^= mix(k)
        h = ((h << 13) | (h >> 19)) & 0xFFFFFFFF
        h = (h * 5 + 0xE6546B64) & 0xFFFFFFFF
    tail = data[n * 4 :]
    if tail:
        h ^= mix(int.from_bytes(tail, "little"))
    h ^= len(data)
    h ^= h >> 16
    h = (h * 0x85EBCA6B) & 0xFFFFFFFF
    h ^= h >> 13
    h = (h * 0xC2B2AE35) & 0xFFFFFFFF
    return h ^ (h >> 16)


def forge(model: bytes, extra: str) -> bytes:
    """``model`` with ``extra`` appended to its header's options and the header checksum made anew as VW makes
    it: chained MurmurHash3 over each field read after the version string."""
    pieces, pos = [], 0

    def take(size: int) -> bytes:
        nonlocal pos
        pos += size
        return model[pos - size : pos]

    take(struct.unpack_from("<I", model, 0)[0] + 4)  # the version string is not hashed
    for size in (4, None, 1, 4, 4, 4, 4, 4, 4):  # id length, id, 'm', labels, bits, lda, ngrams, skips
        pieces.append(take(size if size else struct.unpack("<I", pieces[-1])[0]))
    options = model[pos + 4 : pos + 4 + struct.unpack_from("<I", model, pos)[0]].rstrip(b"\0") + extra.encode() + b"\0"
    take(struct.unpack_from("<I", model, pos)[0] + 4)
    pieces += [struct.pack("<I", len(options)), options]
    checksum = 0
    for piece in pieces:
        checksum = murmur3_32(piece, checksum)
    take(8)  # the stored checksum: its length, then the value
    head = model[: struct.unpack_from("<I", model, 0)[0] + 4] + b"".join(pieces)
    return head + struct.pack("<II", 4, checksum) + model[pos:]


def test_a_forged_model_header_that_writes_files_is_refused_before_vw_reads_it(keyed, tmp_path):  # noqa: F811
    client, service, _ = keyed
    exported = client.get(f"{V1}/model", headers=ADMIN).data
    readable, metrics = tmp_path / "readable.txt", tmp_path / "metrics.json"
    forged = forge(exported, f" --readable_model {readable} --extra_metrics {metrics}")
    # VW takes the forgery: loading it writes both files
    (tmp_path / "forged.vw").write_bytes(forged)
    probe = f"import vowpalwabbit; vowpalwabbit.Workspace('--quiet -i {tmp_path / 'forged.vw'}').finish()"
    subprocess.run([sys.executable, "-c", probe], check=True, capture_output=True)
    assert readable.exists() and metrics.exists()
    readable.unlink()
    metrics.unlink()

    response = client.put(f"{V1}/model", data=forged, headers=ADMIN, content_type="application/octet-stream")
    assert response.status_code == 400
    error = response.get_json()["error"]
    assert error["code"] == "InvalidModelImportFormat" and "--readable_model" in error["message"]
    assert not readable.exists() and not metrics.exists()
    assert client.get(f"{V1}/model", headers=ADMIN).data == exported
    # a header the check reads as it should: the unchanged model passes, the forgery with harmless options too
    assert vwoptions.check_model(forge(exported, " --l2 0.5")).options[-2:] == ["--l2", "0.5"]
    rank(client, "still-serving")


@pytest.mark.parametrize("cut", [173, 200, 250, 300, -40, -1])
def test_a_truncated_model_is_refused(keyed, tmp_path, cut):  # noqa: F811
    client, service, _ = keyed
    for i in range(30):  # a model with weights beyond its header
        rank(client, f"e{i}")
    ws = vowpalwabbit.Workspace(service.loops["cards"].arguments + " --dsjson --quiet")
    for i in range(30):
        record = service.store.decision("cards", f"e{i}")["record"]
        ws.learn(ws.parse(dsjson.labeled(record, 1.0)))
    ws.save(str(tmp_path / "full.vw"))
    ws.finish()
    full = (tmp_path / "full.vw").read_bytes()
    before = client.get(f"{V1}/model", headers=ADMIN).data
    response = client.put(f"{V1}/model", data=full[:cut], headers=ADMIN, content_type="application/octet-stream")
    assert response.status_code == 400, full[:cut][-20:]
    assert response.get_json()["error"]["code"] == "InvalidModelImportFormat"
    assert client.get(f"{V1}/model", headers=ADMIN).data == before
    ok = client.put(f"{V1}/model", data=full, headers=ADMIN, content_type="application/octet-stream")
    assert ok.status_code == 204


def test_a_settings_file_policy_that_names_files_is_refused_at_load(tmp_path):
    config = KEYED_CONFIG.replace(
        'policy = "default"', f'policy = {{ name = "p", arguments = "--cb_explore_adf -f {tmp_path}/x.vw" }}'
    )
    (tmp_path / "ranker.toml").write_text(config)
    with pytest.raises(ValueError, match="-f is not one a policy may use"):
        load_settings(tmp_path / "ranker.toml", environ={})
