"""`tessera demo`: the whole life cycle against a running daemon, on a synthetic spacetime set.

Push a dataset of 4-D clips, train a small cnn4d on it while following the job, register the
weights, export them to ONNX, load the export, predict, and report latency percentiles.
"""

from __future__ import annotations

import shlex
import time

import numpy as np
from rich.console import Console

from tessera.client import Client
from tessera.errors import JobFailed
from tessera.events import JobState
from tessera.follow import follow
from tessera.transport import DEFAULT_TARGET, TLS

# One sample: (C, T, D, H, W). Small enough that a few epochs run in seconds on 2 CPU cores.
CLIP_SHAPE = (1, 4, 4, 4, 4)


def spacetime_clips(samples: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Clips of a bright voxel moving through a noisy volume: class 1 moves forward along W
    over time, class 0 backward, so telling them apart needs the time axis too."""
    rng = np.random.default_rng(seed)
    _, frames, depth, height, width = CLIP_SHAPE
    x = rng.normal(0.0, 0.3, size=(samples, *CLIP_SHAPE)).astype(np.float32)  # (N, C, T, D, H, W)
    y = rng.integers(0, 2, size=samples).astype(np.int64)
    d = rng.integers(0, depth, size=samples)
    h = rng.integers(0, height, size=samples)
    for t in range(frames):
        w = np.where(y == 1, t, width - 1 - t) % width
        x[np.arange(samples), 0, t, d, h, w] += 2.0
    return x, y


def tessera_command(target: str, tls: TLS | None) -> str:
    """`tessera` with the options that reach the daemon at `target` as the demo did: without
    them the commands it suggests would go to the default address, or without TLS. Words are
    quoted for a shell (`[::1]:50051` is a glob in zsh); a token is never among them."""
    words = ["tessera"]
    if target != DEFAULT_TARGET:
        words += ["--target", target]
    if tls is not None:
        files = [("--tls-ca", tls.ca_file), ("--tls-cert", tls.cert_file), ("--tls-key", tls.key_file)]
        given = [(option, str(value)) for option, value in files if value is not None]
        # Any of the files implies TLS; without one, TLS with the system's CAs is --tls.
        words += [word for option_value in given for word in option_value] if given else ["--tls"]
        if tls.server_name:
            words += ["--tls-server-name", tls.server_name]
    return shlex.join(words)


def run_demo(client: Client, console: Console, name: str, samples: int, epochs: int, requests: int) -> None:
    """Run every step, printing what happens; raises on the first failure."""
    started = time.monotonic()
    dataset, model = f"{name}-spacetime", f"{name}-cnn4d"
    info = client.system.info()
    console.print(f"[bold]1/7[/bold] tesserad {info.version} at {client.target}")

    x, y = spacetime_clips(samples)
    pushed = client.datasets.push(dataset, x=x, y=y, splits={"train": 0.75, "val": 0.25}, seed=0)
    console.print(
        f"[bold]2/7[/bold] pushed {pushed.name}:{pushed.version}: {pushed.num_samples} clips shaped "
        f"{CLIP_SHAPE}, splits " + ", ".join(f"{s.name} {s.count}" for s in pushed.splits)
    )

    spec = {
        "experiment": name,
        "architecture": {
            "input_shape": list(CLIP_SHAPE),
            "output_size": 2,
            "cnn4d": {"channels": [4, 8], "kernel_size": 3},
        },
        "task": "classification",
        "data": {"dataset": f"{pushed.name}:{pushed.version}", "train_split": "train", "val_split": "val"},
        "optimizer": {"name": "adam", "lr": 0.01},
        "epochs": epochs,
        "batch_size": 16,
        "seed": 0,
        "log_every_n_steps": 2,
        "register_as": {"model": model, "alias": "staging", "description": "tessera demo"},
    }
    job = client.training.submit(spec)
    console.print(
        f"[bold]3/7[/bold] training job {job.id} (cnn4d, {epochs} epoch{'' if epochs == 1 else 's'})"
    )
    follow(job, console, as_json=False)
    if job.state != JobState.SUCCEEDED or job.registered is None:
        raise JobFailed(
            job, f"demo job {job.id} ended {job.state.value}: {job.info.error or 'no version registered'}"
        )
    trained = job.registered
    console.print(f"[bold]4/7[/bold] registered {trained.model} v{trained.version}")

    export = client.models.export_onnx(model, trained.version, set_alias="production")
    exported = export.version
    console.print(
        f"[bold]5/7[/bold] exported v{exported.version} to ONNX (opset {export.opset}, conv4d {export.conv4d}, "
        f"max |onnx - torch| {export.max_abs_error:.1e})"
    )

    client.inference.load(model, exported.version, runtime="onnx", device="cpu")
    held_out = client.datasets.load(f"{pushed.name}:{pushed.version}")
    batch = held_out["x"][:64]
    logits = client.inference.predict(model, {"input": batch}, version=exported.version)
    output = next(iter(logits.outputs.values()))
    accuracy = float((output.argmax(axis=1) == held_out["y"][:64]).mean())
    console.print(f"[bold]6/7[/bold] loaded v{exported.version}; accuracy on 64 clips {accuracy:.0%}")

    latencies_us = []
    for i in range(requests):
        sent = time.perf_counter_ns()
        client.inference.predict(model, {"input": batch[i % len(batch)][None]}, version=exported.version)
        latencies_us.append((time.perf_counter_ns() - sent) / 1000)
    p50, p95, p99 = np.percentile(latencies_us, [50, 95, 99])
    stats = client.inference.stats(model, exported.version)
    console.print(
        f"[bold]7/7[/bold] {requests} single-clip predictions, client round trip: "
        f"p50 {p50:.0f} us, p95 {p95:.0f} us, p99 {p99:.0f} us"
    )
    for s in stats:
        console.print(
            f"      daemon side: total p50 {s.total.p50_us:.0f} us, p99 {s.total.p99_us:.0f} us "
            f"(compute p50 {s.compute.p50_us:.0f} us, queue p50 {s.queue.p50_us:.0f} us)"
        )
    console.print(f"done in {time.monotonic() - started:.0f} s")
    tessera = tessera_command(client.target, client.tls)
    console.print(
        f"next: {tessera} predict {model} --input FILE.npz, {tessera} stats {model}, "
        f"{tessera} models versions {model}; the README's walk-through goes through each step by hand",
        markup=False,
    )
