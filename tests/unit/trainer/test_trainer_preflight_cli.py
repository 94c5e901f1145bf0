"""The preflight entry point on the examples that name real models, with each model's real chat
template and special tokens in a tokenizer built locally (``spec.model.uri`` points at it, the
datasets at local files in the example's formats); ``sftctl preflight`` end to end; exit 64 with
file:line for a broken row.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import template_tokenizers as tt
import yaml

from sft_trainer.preflight_cli import preflight_job

REPO = Path(__file__).resolve().parents[3]
# example -> (template, family, masking strategy, end-of-turn, what a turn starts with before its content)
EXAMPLES = {
    "lora-llama3-8b-2x8-zero2.yaml": ("llama3_1", "llama3", "incremental", "<|eot_id|>", ""),
    # Mistral's [/INST] is followed by a space that the model generates: it trains
    "qlora-mistral-7b-1gpu.yaml": ("mistral_v0_3", "mistral", "per-turn", "</s>", " "),
    "full-qwen-7b-zero3.yaml": ("qwen2_5", "qwen", "incremental", "<|im_end|>", ""),
    "kueue-queued-lora.yaml": ("llama3_2", "llama3", "incremental", "<|eot_id|>", ""),
}


def _row(fmt: str, i: int) -> dict:
    if fmt == "messages":
        return {"messages": [{"role": "system", "content": "You are a support agent."},
                             {"role": "user", "content": f"My order {i} is late."},
                             {"role": "assistant", "content": f"Order {i} ships today."},
                             {"role": "user", "content": "Thanks!"},
                             {"role": "assistant", "content": "You are welcome."}]}
    if fmt == "prompt-completion":
        return {"prompt": f"Summarize note {i}.", "completion": f"Note {i} in short."}
    return {"instruction": f"Write SQL for question {i}.", "input": "table t(a int)", "output": f"SELECT {i} FROM t;"}


def local_job(tmp_path: Path, example: str, bad_row: bool = False) -> Path:
    """The example with the model pointed at a local tokenizer and the datasets at local files."""
    template, family = EXAMPLES[example][:2]
    doc = yaml.safe_load((REPO / "examples" / example).read_text())
    source = tt.trl_template(template) if template != "mistral_v0_3" else tt.local_template(template)
    doc["spec"]["model"] = {"uri": str(tt.save(tt.build(source, family), tmp_path / "model"))}
    for n, ds in enumerate(doc["spec"]["datasets"]):
        lines = [json.dumps(_row(ds["format"], i)) for i in range(200)]
        if bad_row and n == 0:
            lines[6] = '{"messages": [{"role": "user", "content": "no answer"}]}'
        (tmp_path / f"d{n}.jsonl").write_text("\n".join(lines) + "\n")
        ds["uri"] = f"d{n}.jsonl"
    path = tmp_path / example
    path.write_text(yaml.safe_dump(doc))
    return path


def expected_segments(messages: list[dict], loss_on: str, eot: str, lead: str) -> list[str]:
    turns = [lead + m["content"].strip() + eot for m in messages if m["role"] == "assistant"]
    return turns[-1:] if loss_on == "completion" else turns


@pytest.mark.parametrize("example", list(EXAMPLES))
def test_examples_naming_real_models_pass_preflight_with_their_real_template(tmp_path, example):
    _, _, strategy, eot, lead = EXAMPLES[example]
    job = local_job(tmp_path, example)
    report, _, shown = preflight_job(job, examples=5, base_dir=tmp_path, workdir=tmp_path / "work")
    assert report.template_verdict["strategy"] == strategy
    assert report.bad_rows == 0 and report.turns_without_eot == 0 and report.loss_token_ratio > 0
    loss_on = report.loss_on
    assert len(report.shown_examples) == 5
    for info in report.shown_examples:
        assert info["trained_segments"] == expected_segments(info["messages"], loss_on, eot, lead)
        assert info["source"].startswith(str(tmp_path / "d")) and ":" in info["source"]


def test_mistral_v0_3_drops_the_system_prompt_and_preflight_says_so(tmp_path):
    job = local_job(tmp_path, "qlora-mistral-7b-1gpu.yaml")
    rows = [{"instruction": "q", "output": "a", "system": "Be terse."}] * 20
    (tmp_path / "d0.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    report, _, _ = preflight_job(job, examples=0, base_dir=tmp_path, workdir=tmp_path / "work")
    assert report.dropped_messages == 20
    assert any("does not render the content of 20 messages" in w for w in report.warnings)


def _cli(*argv: str, cwd: Path) -> subprocess.CompletedProcess:
    sftctl = Path(sys.executable).parent / "sftctl"
    return subprocess.run([str(sftctl), "preflight", *argv], cwd=cwd, capture_output=True, text=True, timeout=300)


def test_sftctl_preflight_writes_the_report_and_shows_trained_spans(tmp_path):
    job = local_job(tmp_path, "lora-llama3-8b-2x8-zero2.yaml")
    out = _cli(str(job), "--examples", "2", "--json", str(tmp_path / "r.json"), cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["rows"] == 400 and report["template_verdict"]["strategy"] == "incremental"
    assert set(report["token_lengths"]) == {"min", "p50", "p90", "p99", "max", "mean"}
    shown = report["shown_examples"]
    assert len(shown) == 2 and all(s["trained_segments"] for s in shown)
    assert shown[0]["trained_segments"][0] in out.stdout.replace("\n", "") or "tokens trained" in out.stdout


def test_sftctl_preflight_exits_64_naming_the_broken_row(tmp_path):
    job = local_job(tmp_path, "lora-llama3-8b-2x8-zero2.yaml", bad_row=True)
    doc = yaml.safe_load(job.read_text())
    doc["spec"]["preflight"] = {"maxBadRowRatio": 0.0}
    job.write_text(yaml.safe_dump(doc))
    out = _cli(str(job), "--json", str(tmp_path / "r.json"), cwd=tmp_path)
    assert out.returncode == 64, out.stdout + out.stderr
    assert f"{tmp_path / 'd0.jsonl'}:7: no assistant turn to train on" in out.stderr
    assert json.loads((tmp_path / "r.json").read_text())["exit_code"] == 64


def test_a_row_the_template_rejects_is_a_bad_row_with_file_and_line(tmp_path):
    from sft_trainer.exit_codes import ConfigError

    job = local_job(tmp_path, "qlora-mistral-7b-1gpu.yaml")
    doc = yaml.safe_load(job.read_text())
    doc["spec"]["datasets"][0]["format"] = "messages"
    doc["spec"]["preflight"] = {"maxBadRowRatio": 0.0}
    job.write_text(yaml.safe_dump(doc))
    rows = [_row("messages", i) for i in range(10)]
    rows[3]["messages"].insert(2, {"role": "user", "content": "again"})  # user twice in a row
    (tmp_path / "d0.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(ConfigError) as e:
        preflight_job(job, examples=0, base_dir=tmp_path, workdir=tmp_path / "work")
    assert e.value.exit_code == 64
    assert (f"{tmp_path / 'd0.jsonl'}:4: the chat template fails to render this conversation: After the optional "
            "system message, conversation roles must alternate") in str(e.value)


def test_the_entry_point_leaves_a_one_line_result_for_the_pods_termination_message(tmp_path):
    from sft_trainer.preflight_cli import main

    job = local_job(tmp_path, "kueue-queued-lora.yaml")
    log = tmp_path / "termination-log"
    log.write_text("")  # Kubernetes creates the file; the entry point only writes an existing one
    assert main([str(job), "--base-dir", str(tmp_path), "--examples", "0", "--termination-log", str(log)]) == 0
    line = log.read_text()
    assert line.startswith("rows 200, malformed 0 (0.00%), train/validation/test ")
    assert "lossOn completion" in line and "chat template incremental (end-of-turn <|eot_id|>)" in line
    (tmp_path / "d0.jsonl").write_text("not json\n")
    assert main([str(job), "--base-dir", str(tmp_path), "--termination-log", str(log)]) == 64
    assert f"{tmp_path / 'd0.jsonl'}:1: invalid JSON" in log.read_text()
