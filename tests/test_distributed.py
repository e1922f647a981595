"""Data-parallel training and evaluation: 2 ranks on the CPU (gloo), started by torchrun.

Each test starts real processes (torchrun's launcher, two ranks), so they are kept small:
the digits data, a tiny net, a few epochs.
"""

import csv
import math
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pyro
import pytest
import torch

from pyro_vae.infer.distributed import rank_seed, shard_rows, worker_argv
from pyro_vae.runs.checkpoints import load_checkpoint

HERE = Path(__file__).resolve().parent
TINY = ["--dataset", "digits", "--pair", "mlp", "--pair-kwargs", '{"hidden": [16], "z_dim": 3}',
        "--batch-size", "50", "--train-limit", "300", "--seed", "0", "--device", "cpu"]  # fmt: skip
# one thread per rank: two ranks on a 2-core machine, as torchrun itself sets it
ONE_THREAD = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def metrics(run_dir: Path) -> list[dict[str, str]]:
    with open(run_dir / "metrics.csv") as handle:
        return list(csv.DictReader(handle))


def without_times(rows):
    return [{k: v for k, v in row.items() if "seconds" not in k} for row in rows]


def test_shards_deal_every_row_once_and_have_one_length():
    rows = [shard_rows(11, rank, 3, seed=5) for rank in range(3)]
    assert all(r.numel() == 4 for r in rows)  # ceil(11 / 3), padded
    dealt = torch.cat([r[: len(range(rank, 11, 3))] for rank, r in enumerate(rows)])
    assert sorted(dealt.tolist()) == list(range(11))
    assert torch.equal(shard_rows(7, 0, 1, seed=5), torch.arange(7))
    assert rank_seed(3, 0) == 3 and len({rank_seed(3, r) for r in range(4)}) == 4
    assert worker_argv(["train", "--nproc-per-node", "2", "--nnodes=1", "--out", "r"]) == [
        "train",
        "--out",
        "r",
    ]


def test_summed_gradients_equal_one_process_and_ddp(tmp_path):
    """After one step, the gradient summed over 2 ranks equals one process's on the same
    global batch and the same draws (each half with its rank's stream), to 1e-6; DDP around
    PairLoss averages the same gradients."""
    out = tmp_path / "grads.pt"
    subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
         str(HERE / "pairs" / "distributed_gradients.py"), str(out)],
        cwd=tmp_path, check=True, capture_output=True, timeout=300,
        env={**os.environ, **ONE_THREAD},
    )  # fmt: skip
    saved = torch.load(out, weights_only=True)
    sys.path.insert(0, str(HERE / "pairs"))
    try:
        import distributed_gradients as worker
    finally:
        sys.path.pop(0)
    halves = worker.global_batch().chunk(2)
    expected = {}
    for rank, half in enumerate(halves):
        pair = worker.fresh_pair()
        for name, grad in worker.pyro_gradients(pair, half, rank).items():
            expected[name] = expected.get(name, 0) + grad
    assert saved["summed"].keys() == expected.keys()
    for name, grad in expected.items():
        torch.testing.assert_close(saved["summed"][name], grad, rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(saved["ddp_averaged"][name] * 2, grad, rtol=1e-6, atol=1e-6)
    pyro.clear_param_store()


def test_two_ranks_train_like_one_and_repeat_exactly(run_cli, tmp_path):
    """torchrun -m pyro_vae and pyro-vae --nproc-per-node 2 train the same run; it reaches
    the one-process run's validation ELBO within noise, and rank 0 alone writes."""
    one = run_cli("train", *TINY, "--epochs", "4", "--out", "one", cwd=tmp_path, env=ONE_THREAD)
    first = run_cli("train", *TINY, "--epochs", "4", "--out", "two", "--nproc-per-node", "2",
                    cwd=tmp_path)  # fmt: skip
    again = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
         "-m", "pyro_vae", "train", *TINY, "--epochs", "4", "--out", "again"],
        cwd=tmp_path, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert again.returncode == 0, again.stderr
    assert one.stderr.count("epoch 4/4") == 1 and first.stderr.count("epoch 4/4") == 1
    single, double = metrics(tmp_path / "one"), metrics(tmp_path / "two")
    assert abs(float(double[-1]["valid_elbo"]) - float(single[-1]["valid_elbo"])) < 1.5
    assert float(double[-1]["valid_elbo"]) > float(double[0]["valid_elbo"])  # it learns
    assert without_times(double) == without_times(metrics(tmp_path / "again"))
    a = load_checkpoint(tmp_path / "two" / "checkpoint.pt")
    b = load_checkpoint(tmp_path / "again" / "checkpoint.pt")
    assert a["world_size"] == 2 and len(a["ranks"]) == 2
    assert all(torch.equal(a["module"][k], b["module"][k]) for k in a["module"])
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == sorted(
        p.name for p in (tmp_path / "one").iterdir()
    )


def test_bad_launches_are_clear(run_cli, tmp_path):
    flags = [f for f in TINY]
    flags[flags.index("--batch-size") + 1] = "51"
    odd = run_cli("train", *flags, "--out", "odd", "--nproc-per-node", "2", cwd=tmp_path,
                  check=False)  # fmt: skip
    assert odd.returncode == 2 and "does not divide by 2" in odd.stderr
    assert "Traceback" not in odd.stderr
    nodes = run_cli("train", *TINY, "--out", "n", "--nproc-per-node", "1", "--nnodes", "2",
                    cwd=tmp_path, check=False)  # fmt: skip
    assert nodes.returncode == 2 and "--master-addr" in nodes.stderr
    zero = run_cli("train", *TINY, "--out", "z", "--nproc-per-node", "0", cwd=tmp_path,
                   check=False)  # fmt: skip
    assert zero.returncode == 2 and "--nproc-per-node 0" in zero.stderr


def test_a_killed_rank_stops_the_others_and_the_run_resumes_exactly(run_cli, tmp_path):
    """kill -9 of rank 1 in epoch 2: the launcher names the rank and exits within the
    timeout, checkpoint.pt holds epoch 1, and the resumed run ends where an uninterrupted
    2-rank run ends, bit for bit."""
    whole = run_cli("train", *TINY, "--epochs", "3", "--out", "whole", "--nproc-per-node", "2",
                    cwd=tmp_path)  # fmt: skip
    assert whole.returncode == 0
    started = time.monotonic()
    killed = run_cli("train", *TINY, "--epochs", "3", "--out", "cut", "--nproc-per-node", "2",
                     cwd=tmp_path, check=False, timeout=300,
                     env={"PYRO_VAE_FAULT": "step:8", "PYRO_VAE_FAULT_RANK": "1"})  # fmt: skip
    assert time.monotonic() - started < 200
    assert killed.returncode == 1
    assert "rank 1" in killed.stderr and "SIGKILL" in killed.stderr
    assert load_checkpoint(tmp_path / "cut" / "checkpoint.pt")["epoch"] == 1
    run_cli("train", *TINY, "--epochs", "3", "--out", "cut", "--nproc-per-node", "2",
            "--resume", cwd=tmp_path)  # fmt: skip
    a = load_checkpoint(tmp_path / "whole" / "checkpoint.pt")
    b = load_checkpoint(tmp_path / "cut" / "checkpoint.pt")
    assert all(torch.equal(a["module"][k], b["module"][k]) for k in a["module"])
    assert without_times(metrics(tmp_path / "whole")) == without_times(metrics(tmp_path / "cut"))


def test_two_agents_with_nnodes_2_train_one_run(tmp_path):
    """Two torchrun agents (pyro-vae's --nnodes 2 launch) on 127.0.0.1, one rank each."""
    port = str(free_port())
    command = [sys.executable, "-m", "pyro_vae", "train", *TINY, "--epochs", "2", "--out",
               "nodes", "--nproc-per-node", "1", "--nnodes", "2", "--master-addr",
               "127.0.0.1", "--master-port", port]  # fmt: skip
    agents = [
        subprocess.Popen(
            [*command, "--node-rank", str(rank)],
            cwd=tmp_path,
            text=True,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env={**os.environ, **ONE_THREAD},
        )  # fmt: skip
        for rank in (0, 1)
    ]
    outputs = [agent.communicate(timeout=600) for agent in agents]
    assert [agent.returncode for agent in agents] == [0, 0], [err[-3000:] for _, err in outputs]
    rows = metrics(tmp_path / "nodes")
    assert [row["epoch"] for row in rows] == ["1", "2"]
    assert load_checkpoint(tmp_path / "nodes" / "checkpoint.pt")["world_size"] == 2


def test_sharded_evaluation_equals_one_process(run_cli, tmp_path):
    run_cli("train", *TINY, "--epochs", "1", "--out", "run", cwd=tmp_path, env=ONE_THREAD)
    flags = ["--num-samples", "20", "--limit", "250", "--batch-size", "50", "--json"]
    one = run_cli("evaluate", "run", *flags, cwd=tmp_path, env=ONE_THREAD)
    two = run_cli("evaluate", "run", *flags, "--nproc-per-node", "2", cwd=tmp_path)
    import json

    single, sharded = json.loads(one.stdout), json.loads(two.stdout.strip().splitlines()[-1])
    for key in ("log_px", "elbo", "ess_mean"):
        assert sharded[key] == pytest.approx(single[key], rel=1e-6), key
    assert sharded["num_points"] == 250 and sharded["ranks"] == 2
    flags = ["--ks", "3,30", "--points", "60", "--repeats", "4", "--json", "--out", "conv"]
    one = json.loads(run_cli("convergence", "run", *flags, cwd=tmp_path, env=ONE_THREAD).stdout)
    two = run_cli("convergence", "run", *flags, "--nproc-per-node", "2", cwd=tmp_path)
    two = json.loads(two.stdout.strip().splitlines()[-1])
    assert two["ranks"] == 2 and len(two["results"]) == len(one["results"]) == 4
    for a, b in zip(one["results"], two["results"], strict=True):
        for key in ("estimate", "stderr", "ess"):
            assert b[key] == pytest.approx(a[key], rel=1e-6), (a["estimator"], key)
    # diagnose: the draws from q (blocks of 25 points, a seed each) shared among the ranks
    flags = ["--points", "60", "--num-samples", "64", "--gap-steps", "5", "--json"]
    one = run_cli("diagnose", "run", *flags, "--out", "d1", cwd=tmp_path, env=ONE_THREAD)
    two = run_cli("diagnose", "run", *flags, "--out", "d2", "--nproc-per-node", "2",
                  cwd=tmp_path)  # fmt: skip
    one, two = json.loads(one.stdout), json.loads(two.stdout.strip().splitlines()[-1])
    assert two["ranks"] == 2 and two["num_points"] == 60
    for key in ("khat", "log_px_per_point", "elbo_per_point", "kl_per_dim",
                "amortization_gap_per_point"):  # fmt: skip
        assert two[key] == pytest.approx(one[key], rel=1e-5, abs=1e-6), key


def test_compile_score_function_and_enum_train_on_two_ranks(run_cli, tmp_path):
    """--compile on two ranks follows the eager two-rank run (DReG, K = 3); TraceGraph_ELBO
    with a neural baseline and TraceEnum_ELBO (a mixture pair) train too."""
    dreg = ["--objective", "iwae-dreg", "--num-particles", "3"]  # pyro_vae's own estimator
    eager = run_cli("train", *TINY, *dreg, "--epochs", "2", "--out", "eager",
                    "--nproc-per-node", "2", cwd=tmp_path)  # fmt: skip
    compiled = run_cli("train", *TINY, *dreg, "--epochs", "2", "--out", "compiled", "--compile",
                       "strict", "--nproc-per-node", "2", cwd=tmp_path)  # fmt: skip
    assert "traced the loss for batch (25, 64)" in compiled.stderr
    for a, b in zip(metrics(tmp_path / "eager"), metrics(tmp_path / "compiled"), strict=True):
        assert float(b["train_loss"]) == pytest.approx(float(a["train_loss"]), rel=1e-5)
        assert float(b["valid_elbo"]) == pytest.approx(float(a["valid_elbo"]), rel=1e-5)
    assert eager.returncode == 0
    sbn = ["--dataset", "digits", "--binarize", "static", "--pair", "sbn", "--pair-kwargs",
           '{"z_dim": 8}', "--objective", "tracegraph", "--baseline", "nn", "--batch-size",
           "50", "--train-limit", "100", "--epochs", "1", "--out", "sbn",
           "--nproc-per-node", "2"]  # fmt: skip
    run_cli("train", *sbn, cwd=tmp_path)
    gmvae = ["--dataset", "digits", "--pair", "gmvae", "--objective", "enum", "--batch-size",
             "50", "--train-limit", "100", "--epochs", "1", "--out", "gmvae",
             "--nproc-per-node", "2"]  # fmt: skip
    run_cli("train", *gmvae, cwd=tmp_path)
    for name in ("sbn", "gmvae"):
        row = metrics(tmp_path / name)[-1]
        assert math.isfinite(float(row["train_loss"])) and math.isfinite(float(row["valid_elbo"]))


def test_a_nan_at_one_rank_stops_every_rank_with_one_message(run_cli, tmp_path):
    pair = f"{HERE / 'pairs' / 'nan_on_one_rank.py'}:NaNOnOneRank"
    result = run_cli("train", "--dataset", "digits", "--pair", pair, "--pair-kwargs",
                     '{"after": 9}', "--batch-size", "50", "--train-limit", "300", "--epochs",
                     "3", "--out", "nan", "--nproc-per-node", "2", cwd=tmp_path,
                     check=False)  # fmt: skip
    assert result.returncode == 1
    message = "pyro-vae train: error: loss is nan (summed over the ranks) at epoch 2, step 3"
    assert result.stderr.count(message) == 2, result.stderr[-3000:]  # one per rank
    assert "exited with code 2" in result.stderr  # both ranks: the same TrainingError
    assert load_checkpoint(tmp_path / "nan" / "checkpoint.pt")["epoch"] == 1


def test_mismatched_ranks_ports_and_rendezvous_are_clear(tmp_path):
    port = str(free_port())
    base = [sys.executable, "-m", "pyro_vae", "train", *TINY, "--epochs", "1", "--out", "m",
            "--nproc-per-node", "1", "--nnodes", "2", "--master-addr", "127.0.0.1",
            "--master-port", port]  # fmt: skip
    env = {**os.environ, **ONE_THREAD, "PYRO_VAE_DIST_TIMEOUT": "10"}
    agents = [subprocess.Popen([*base, "--node-rank", str(rank), "--lr", lr], cwd=tmp_path,
                               text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               env=env)  # fmt: skip
              for rank, lr in ((0, "0.001"), (1, "0.002"))]  # fmt: skip
    errs = [agent.communicate(timeout=300)[1] for agent in agents]
    assert [agent.returncode for agent in agents] == [1, 1]
    assert "rank 1 was started with another configuration than rank 0: lr is 0.002" in errs[0]
    with socket.socket() as busy:  # node 0 cannot open its rendezvous port
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        taken = str(busy.getsockname()[1])
        started = time.monotonic()
        result = subprocess.run([*base[:-1], taken, "--node-rank", "0"], cwd=tmp_path,
                                capture_output=True, text=True, env=env, timeout=300)  # fmt: skip
    assert result.returncode == 2 and "torchrun could not start the 2 ranks" in result.stderr
    assert "--master-port is free" in result.stderr and "Traceback" not in result.stderr
    lonely = subprocess.run([*base, "--node-rank", "1"], cwd=tmp_path, capture_output=True,
                            text=True, env=env, timeout=300)  # fmt: skip
    assert lonely.returncode == 2 and "within 10 s" in lonely.stderr
    assert time.monotonic() - started < 200


def test_a_run_resumes_on_another_number_of_ranks(run_cli, tmp_path):
    run_cli("train", *TINY, "--epochs", "1", "--out", "run", cwd=tmp_path, env=ONE_THREAD)
    more = run_cli("train", *TINY, "--epochs", "2", "--out", "run", "--resume",
                   "--nproc-per-node", "2", cwd=tmp_path)  # fmt: skip
    assert "saved by 1 rank(s) and the run resumes on 2" in more.stderr
    assert [row["epoch"] for row in metrics(tmp_path / "run")] == ["1", "2"]
    assert load_checkpoint(tmp_path / "run" / "checkpoint.pt")["world_size"] == 2
