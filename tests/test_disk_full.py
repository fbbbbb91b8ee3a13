"""A full disk is one red line and exit code 1, not a traceback: commands run onto a real file
system with no room, a 64 KiB tmpfs mounted in a user and mount namespace of their own."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

from fast_scaffold import COMPLETIONS, TEST_PRESET, with_budget

from model import build_policy, build_tokenizer, save_policy

ARITH = Path(__file__).resolve().parents[1] / "scaffolds" / "arith"

TORCH_SAVE = ("import sys, torch; from harness.commands import run_guarded; "
              "sys.exit(run_guarded(lambda args: torch.save({'w': torch.zeros(10 ** 6)}, 'w.pt'), None))")


def on_full_disk(tmp_path, command: str) -> subprocess.CompletedProcess:
    """`command` (sh) in the folder FULL, a 64 KiB tmpfs, with $PY this Python."""
    full = tmp_path / "full"
    full.mkdir()
    script = f"mount -t tmpfs -o size=64k tmpfs '{full}' && cd '{full}' && PY='{sys.executable}' && {command}"
    return subprocess.run(["unshare", "-Urm", "sh", "-c", script], capture_output=True, text=True, timeout=300,
                          env={"PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1", "COLUMNS": "400"})


def test_a_full_disk_under_a_command_is_one_line_and_exit_code_1(tmp_path):
    proc = on_full_disk(tmp_path, '"$PY" -m harness.cli model new --preset tiny --out m')
    assert proc.returncode == 1, proc.stderr
    assert "error: the disk is full: " in proc.stderr and "No space left on device" in proc.stderr
    assert "a campaign resumes where it stopped" in proc.stderr and "Traceback" not in proc.stderr


def test_an_error_that_hides_enospc_is_still_a_full_disk_where_there_is_no_room(tmp_path):
    """torch.save says "unexpected pos", no errno: the file system's free space tells."""
    proc = on_full_disk(tmp_path, f'"$PY" -c "{TORCH_SAVE}"')
    assert proc.returncode == 1, proc.stderr
    assert "error: the disk is full: " in proc.stderr and "unexpected pos" in proc.stderr
    assert "Traceback" not in proc.stderr
    # with room, the same save is no error at all, and an error of another kind is not called a full disk
    ok = subprocess.run([sys.executable, "-c", TORCH_SAVE], cwd=tmp_path, capture_output=True, text=True)
    assert ok.returncode == 0 and (tmp_path / "w.pt").stat().st_size > 4 * 10 ** 6
    bug = subprocess.run([sys.executable, "-c", TORCH_SAVE.replace("torch.zeros(10 ** 6)", "torch.zeros(-1)")],
                         cwd=tmp_path, capture_output=True, text=True)
    assert bug.returncode == 1 and "Traceback" in bug.stderr and "disk is full" not in bug.stderr


def test_a_run_whose_trained_policy_cannot_be_cached_raises_rather_than_fail_the_candidate(tmp_path):
    """The runner's training cache on a full file system: run_scaffold raises OSError(ENOSPC) (a
    campaign stops, and its resume runs the round again) instead of a failed result, which a
    campaign would record as the candidate's verdict (one here recorded 26 rounds so)."""
    tokenizer = build_tokenizer(["Q: 12 + 34\nA: 46"])
    save_policy(build_policy(TEST_PRESET, tokenizer, seed=0), tokenizer, tmp_path / "base")
    shutil.copytree(ARITH, tmp_path / "scaffold")
    with_budget(tmp_path / "scaffold", COMPLETIONS)
    options = {"base": str(tmp_path / "base"), "data_dir": str(tmp_path / "data"), "cache_dir": "cache",
               "seeds": [0], "timeout_s": 300.0, "warm": False,
               "sandbox": False}  # bubblewrap cannot start inside this namespace; the cache is the trusted side's
    script = (f"import errno, json; from rl_pipeline.run import run_scaffold\n"
              f"try:\n"
              f"    result = run_scaffold({str(tmp_path / 'scaffold')!r}, {str(tmp_path / 'out')!r}, "
              f"overrides={{'sampling.max_new_tokens': 6, 'grpo.max_completion_length': 6}}, **{options!r})\n"
              f"    print(json.dumps({{'returned': result['status']}}))\n"
              f"except OSError as err:\n"
              f"    print(json.dumps({{'raised': err.errno == errno.ENOSPC, 'message': str(err)}}))\n")
    (tmp_path / "script.py").write_text(script)
    proc = on_full_disk(tmp_path, f'"$PY" {tmp_path / "script.py"}')
    assert proc.returncode == 0, proc.stderr[-3000:]
    outcome = json.loads(proc.stdout.strip().splitlines()[-1])
    assert outcome["raised"] and "No space left on device" in outcome["message"], outcome
    # the failed result the worker wrote says why, for whoever reads the round's folder
    result = json.loads((tmp_path / "out" / "result.json").read_text())
    assert result["status"] == "failed" and "No space left on device" in result["reason"]
