"""`researcher model ...` as a user runs it, checkpoints round-tripping, and bad input."""

import json
import subprocess
import sys

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from harness.cli import main
from model import EXPERTS_IMPL, build_policy, build_tokenizer, load_policy, load_tokenizer, save_policy
from model.pretrain import PretrainConfig, _batch, encode_pairs, pretrain


def test_model_new_round_trips_in_a_fresh_process(tmp_path, capsys):
    out = tmp_path / "fresh"
    assert main(["model", "new", "--preset", "tiny", "--out", str(out)]) == 0
    assert "saved" in capsys.readouterr().out
    policy = load_policy(out)
    assert policy.config._experts_implementation == EXPERTS_IMPL
    ids = load_tokenizer(out)("Q: 1 + 2\nA: ", return_tensors="pt").input_ids
    with torch.no_grad():
        logits = policy(ids).logits[0, -1]
    script = (
        "import sys, torch, json\n"
        "from transformers import AutoModelForCausalLM, AutoTokenizer\n"
        "p = AutoModelForCausalLM.from_pretrained(sys.argv[1]); t = AutoTokenizer.from_pretrained(sys.argv[1])\n"
        "ids = t('Q: 1 + 2\\nA: ', return_tensors='pt').input_ids\n"
        "print(json.dumps(p(ids).logits[0, -1].tolist()))\n"
    )
    fresh = subprocess.run([sys.executable, "-c", script, str(out)], capture_output=True, text=True,
                           env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"}, check=True)
    other = torch.tensor(json.loads(fresh.stdout.strip().splitlines()[-1]))
    torch.testing.assert_close(other, logits, rtol=1e-4, atol=1e-5)


def test_plain_transformers_loading_works(tmp_path):
    tokenizer = build_tokenizer()
    save_policy(build_policy("tiny", tokenizer), tokenizer, tmp_path)
    assert AutoTokenizer.from_pretrained(str(tmp_path)).pad_token == "<pad>"
    assert type(AutoModelForCausalLM.from_pretrained(str(tmp_path))).__name__ == "MiniMaxM2ForCausalLM"


def test_unknown_preset_is_a_clear_error(tmp_path, capsys):
    assert main(["model", "new", "--preset", "huge", "--out", str(tmp_path)]) == 2
    assert "unknown preset 'huge'" in capsys.readouterr().err


@pytest.mark.parametrize("missing, message", [("config.json", "no config.json"),
                                              ("tokenizer.json", "no tokenizer")])
def test_incomplete_checkpoint_is_a_clear_error(tmp_path, missing, message):
    tokenizer = build_tokenizer()
    save_policy(build_policy("tiny", tokenizer), tokenizer, tmp_path)
    (tmp_path / missing).unlink()
    with pytest.raises(FileNotFoundError, match=message):
        load_policy(tmp_path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_policy(tmp_path / "nowhere")


def test_model_generate_command(tmp_path, capsys):
    main(["model", "new", "--out", str(tmp_path)])
    code = main(["model", "generate", "--model", str(tmp_path), "Q: 1 + 1\nA: ", "Q: 22 * 3\nA: ",
                 "--max-new-tokens", "5", "-n", "2", "--seed", "3", "--temperature", "0.8"])
    assert code == 0
    out = capsys.readouterr().out
    assert "tokens/s" in out and out.count("length") + out.count("stop") >= 4
    assert main(["model", "generate", "--model", str(tmp_path), "x", "--max-new-tokens", "0"]) == 2
    assert "max_new_tokens" in capsys.readouterr().err


def test_pretraining_is_deterministic(tmp_path):
    pairs = [(f"Q: {a} + {b}\nA: ", str(a + b)) for a in range(10) for b in range(10)]
    texts = [p + a for p, a in pairs]
    summaries = []
    for name in ("one", "two"):
        config = PretrainConfig(out=str(tmp_path / name), steps=12, batch_size=16, warmup_steps=2)
        summaries.append(pretrain(config, pairs, texts))
    a, b = load_policy(tmp_path / "one"), load_policy(tmp_path / "two")
    for (name, pa), pb in zip(a.named_parameters(), b.parameters()):
        assert torch.equal(pa, pb), name
    assert summaries[0]["final_loss"] == summaries[1]["final_loss"]
    # ...and it learned: on all 100 sums the loss fell well below the untrained policy's (about ln
    # of the vocabulary), which two runs that did nothing would share just as well.
    tokenizer = load_tokenizer(tmp_path / "one")
    input_ids, labels = _batch(encode_pairs(tokenizer, pairs), list(range(len(pairs))), tokenizer.pad_token_id)

    def loss(policy):
        with torch.no_grad():
            return policy.eval()(input_ids=input_ids, labels=labels).loss.item()

    untrained = loss(build_policy("tiny", tokenizer, seed=0))
    assert untrained > 5.0 and loss(a) < 0.5 * untrained and summaries[0]["final_loss"] < 0.6 * untrained
    written = json.loads((tmp_path / "one" / "pretrain.json").read_text())
    assert written["steps"] == 12 and written["stopped_by"] == "steps"
    with pytest.raises(ValueError, match="at least one"):
        pretrain(PretrainConfig(out=str(tmp_path / "x"), steps=1), [], texts)


def test_pretrain_command_reports_its_child_s_error_as_one_line(tmp_path, monkeypatch, capfd):
    monkeypatch.chdir(tmp_path)  # the corpus's splits land in runs/data here
    assert main(["model", "pretrain", "--out", "/proc/no-such-folder/base", "--steps", "1"]) == 2
    err = " ".join(capfd.readouterr().err.split())
    assert "error: [Errno 2] No such file or directory: '/proc/no-such-folder'" in err
    assert "Traceback" not in err
