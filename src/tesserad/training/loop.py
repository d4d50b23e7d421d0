"""The training loop a worker runs: optimiser, LR schedule, epochs/steps, validation, early
stopping, checkpoints, and events for the daemon. Runs under torch.distributed when world > 1.

Determinism: the model is initialised from `seed`, epoch e's data order is a permutation drawn
from `seed` and e alone, and checkpoints carry the RNG state, so the same spec and seed give
the same loss curve on CPU, across a resume too.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import psutil
import torch
import torch.nn.functional as F
from torch import nn

from tesserad.nn import build_model, spec_from_dict
from tesserad.training.checkpoints import checkpoint_bytes, restore, restore_weights, weights_bytes
from tesserad.training.finetune import parameter_groups, start_from_parent
from tesserad.training.schedules import lr_at

Emit = Callable[[str, dict[str, Any]], None]


class NonFiniteLoss(Exception):
    """The loss became NaN or infinite."""


@dataclass
class TrainingData:
    """Whole arrays plus the sample indices of each split."""

    inputs: np.ndarray
    targets: np.ndarray
    train_indices: np.ndarray
    val_indices: np.ndarray | None


@dataclass
class Distributed:
    rank: int
    world: int

    @property
    def leader(self) -> bool:
        return self.rank == 0


@dataclass
class Outcome:
    status: str  # succeeded, cancelled
    epoch: int
    step: int
    metrics: dict[str, float]
    weights: bytes | None = None


# What an epoch's end decides from its metrics, carried over an epoch that max_steps cut short.
_EPOCH_VERDICTS = ("early_best", "bad_epochs", "best")


def build_optimizer(params: Any, config: dict[str, Any]) -> torch.optim.Optimizer:
    name, lr, wd = config["name"], config["lr"], config["weight_decay"]
    if name == "sgd":
        return torch.optim.SGD(
            params, lr=lr, momentum=config["momentum"], nesterov=config["nesterov"], weight_decay=wd
        )
    betas = (config["beta1"], config["beta2"])
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, betas=betas, eps=config["eps"], weight_decay=wd)
    return torch.optim.AdamW(params, lr=lr, betas=betas, eps=config["eps"], weight_decay=wd)


def loss_function(task: str, loss: str) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    if task == "classification":
        return F.cross_entropy
    regression: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
        "mse": F.mse_loss,
        "l1": F.l1_loss,
        "huber": F.huber_loss,
    }
    return regression[loss]


AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def use_compile(setting: str, device: torch.device) -> bool:
    """training.compile: 'on' and 'off' as said; 'auto' compiles CUDA jobs only. On CPU the
    cnn4d bench (bench/results/conv4d_cpu.json, compile_cnn4d; 2 shared cores) measured
    compile at 0.53-0.86x eager's speed at batch 1 and 1.05-1.21x at batch 32, after 67-170 s
    of compiling (22-39 s with inductor's cache warm): rarely paid back by a CPU job. On an
    H200 (conv4d_cuda.json) compiled steps ran 1.43-1.54x eager's speed after 9-15 s of
    compiling per batch size: paid back after 4,000-7,000 steps of this small model."""
    if setting == "auto":
        return device.type == "cuda"
    return setting == "on"


def epoch_order(seed: int, epoch: int, count: int, dist: Distributed) -> torch.Tensor:
    """This rank's sample order for `epoch`: a seeded permutation, padded so ranks stay in step."""
    # Reduced mod 2**64, the range torch seeds take: any int64 seed works, and a seed whose
    # product was already in range keeps its order (torch reads a negative seed mod 2**64 too).
    generator = torch.Generator().manual_seed((seed * 1_000_003 + epoch) % 2**64)
    order = torch.randperm(count, generator=generator)
    per_rank = math.ceil(count / dist.world)
    if per_rank * dist.world > count:
        order = torch.cat([order, order[: per_rank * dist.world - count]])
    return order[dist.rank :: dist.world]


def improved(value: float, best: float | None, mode: str, min_delta: float) -> bool:
    if best is None:
        return True
    return value < best - min_delta if mode == "min" else value > best + min_delta


class Trainer:
    """One attempt of one job on one rank."""

    def __init__(
        self,
        config: dict[str, Any],
        data: TrainingData,
        device: torch.device,
        dist: Distributed,
        emit: Emit,
        save_checkpoint: Callable[[bytes, dict[str, Any]], None],
        should_stop: Callable[[], bool],
        resource_interval_s: float,
        initial_weights: bytes = b"",
        compile_setting: str = "off",
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self._clock = clock
        self.device = device
        self.dist = dist
        self.emit = emit if dist.leader else (lambda _kind, _data: None)
        self.save_checkpoint = save_checkpoint
        self.should_stop = should_stop
        self.resource_interval_s = resource_interval_s
        self.task = config["task"]
        # Copies: the arrays are read-only memory maps of the dataset file.
        self.inputs = torch.from_numpy(np.array(data.inputs, dtype=np.float32)).to(device)
        targets = torch.from_numpy(np.array(data.targets))
        if self.task == "classification":
            targets = targets.long()
        else:
            targets = targets.float()
            if targets.dim() == 1:
                targets = targets.unsqueeze(1)  # (N,) -> (N, 1) for output_size 1
        self.targets = targets.to(device)
        self.train_indices = torch.as_tensor(data.train_indices, dtype=torch.long)
        self.val_indices = (
            torch.as_tensor(data.val_indices, dtype=torch.long) if data.val_indices is not None else None
        )
        torch.manual_seed(config["seed"])
        self.model: nn.Module = build_model(spec_from_dict(config["architecture"]))
        fine_tune = config.get("fine_tune")
        if fine_tune:
            # A resumed attempt gets no initial weights: its checkpoint brings them.
            start_from_parent(self.model, initial_weights or None, fine_tune, config["architecture"])
        self.model = self.model.to(device)
        self.net: nn.Module = self.model
        if dist.world > 1:
            from torch.nn.parallel import DistributedDataParallel

            self.net = DistributedDataParallel(
                self.model, device_ids=[device.index] if device.type == "cuda" else None
            )
        params = (
            parameter_groups(self.model, fine_tune, config["architecture"])
            if fine_tune
            else self.net.parameters()
        )
        self.optimizer = build_optimizer(params, config["optimizer"])
        # Reduced precision: autocast around forward and loss; parameters, optimiser state and
        # checkpoints stay float32. fp16 (CUDA only, checked at submit) scales the loss so small
        # gradients do not flush to zero; the scaler skips steps whose gradients overflowed.
        precision = config.get("precision", "fp32")
        self.autocast_dtype = AUTOCAST_DTYPES.get(precision)
        self.scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
        self.compiled = use_compile(compile_setting, device)
        if self.compiled:
            self.net = torch.compile(self.net)  # type: ignore[assignment]
        self.loss_fn = loss_function(self.task, config["loss"])
        batch = config["batch_size"]
        per_rank = math.ceil(len(self.train_indices) / dist.world)
        self.steps_per_epoch = math.ceil(per_rank / batch)
        epochs, max_steps = config["epochs"], config["max_steps"]
        by_epochs = epochs * self.steps_per_epoch if epochs else None
        self.total_steps = min(s for s in (by_epochs, max_steps or None) if s is not None)
        self.epochs = epochs or math.ceil(max_steps / self.steps_per_epoch)
        self.loop_state: dict[str, Any] = {
            "epoch": 0,
            "step": 0,
            "early_best": None,
            "bad_epochs": 0,
            "best": None,
        }

    def resume_from(self, checkpoint: bytes) -> None:
        """Go on from a checkpoint: this job's own, or (spec.resume_from, mode "full") another
        job's, whose optimiser settings give way to this spec's (`restore`)."""
        self.loop_state = restore(checkpoint, self.model, self.optimizer, self.scaler)
        epoch, step = self.loop_state["epoch"], self.loop_state["step"]
        resume = self.config.get("resume_from")
        whose = (
            f"job {resume['job']}'s"
            if resume and resume.get("mode") == "full" and resume["step"] == step
            else "the"
        )
        self.emit(
            "log",
            {"level": "info", "message": f"resumed from {whose} epoch {epoch} checkpoint (step {step})"},
        )

    def start_from_weights(self, checkpoint: bytes) -> None:
        """Take a checkpoint's model weights; the optimiser and the loop start afresh (PBT's exploit,
        spec.resume_from)."""
        restore_weights(checkpoint, self.model)
        resume = self.config.get("resume_from")
        source = (
            f"the weights of job {resume['job']}'s epoch {resume['epoch']} checkpoint"
            if resume
            else "another trial's weights"
        )
        self.emit("log", {"level": "info", "message": f"starting from {source}"})

    def _stop_requested(self) -> bool:
        stop = self.should_stop()
        if self.dist.world > 1:
            # Every rank must leave at the same step, or the others would wait forever in allreduce.
            flag = torch.tensor([1.0 if stop else 0.0], device=self.device)
            torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
            stop = bool(flag.item())
        return stop

    def run(self) -> Outcome:
        config = self.config
        batch = config["batch_size"]
        log_every = config["log_every_n_steps"]
        early = config["early_stopping"]
        step = self.loop_state["step"]
        start_step = step
        started = self._clock()
        # samples/s is over training steps only: a window that spans an epoch's end leaves out
        # its validation and checkpoint (the time left, from `started`, keeps them in).
        window_start, window_samples = started, 0
        epoch_ended: float | None = None
        next_resources = started
        process = psutil.Process()
        process.cpu_percent()
        last_metrics: dict[str, float] = {}
        first_epoch, batches_done = self._resume_position()
        # The cut epoch's sums so far, when this job goes on part way through it.
        carried = self._carried_epoch() if batches_done else (0.0, 0.0, 0)
        for epoch in range(first_epoch, self.epochs):
            epoch_started = self._clock()
            if epoch_ended is not None:
                window_start += epoch_started - epoch_ended
            self.net.train()
            order = epoch_order(config["seed"], epoch, len(self.train_indices), self.dist)
            loss_sum = torch.tensor(carried[0], device=self.device)
            correct = torch.tensor(carried[1], device=self.device)
            seen = carried[2]
            carried = (0.0, 0.0, 0)
            at_start = {key: self.loop_state[key] for key in _EPOCH_VERDICTS}
            skipped = batches_done * batch if epoch == first_epoch else 0
            for first in range(skipped, len(order), batch):
                if step >= self.total_steps:
                    break
                if self._stop_requested():
                    return Outcome("cancelled", epoch, step, last_metrics)
                index = self.train_indices[order[first : first + batch]].to(self.device)
                x, y = self.inputs[index], self.targets[index]  # (B, *input_shape), (B,) or (B, out)
                lr = lr_at(
                    config["lr_schedule"],
                    config["optimizer"]["lr"],
                    step,
                    self.total_steps,
                    self.steps_per_epoch,
                )
                for group in self.optimizer.param_groups:
                    group["lr"] = lr * group.get("lr_scale", 1.0)
                with self._autocast():
                    out = self.net(x)
                loss = self.loss_fn(out.float(), y)
                value = loss.item()
                if not math.isfinite(value):
                    raise NonFiniteLoss(
                        f"the training loss became {value} at epoch {epoch + 1}, step {step + 1} (lr {lr:.3g}); "
                        "lower optimizer.lr, set optimizer.grad_clip_norm, or check the dataset for NaN/inf"
                    )
                self.optimizer.zero_grad(set_to_none=True)
                # torch leaves Tensor.backward unannotated.
                self.scaler.scale(loss).backward()  # type: ignore[no-untyped-call]
                if config["optimizer"]["grad_clip_norm"]:
                    self.scaler.unscale_(self.optimizer)
                    torch.nn.utils.clip_grad_norm_(
                        self.net.parameters(), config["optimizer"]["grad_clip_norm"]
                    )
                self.scaler.step(self.optimizer)
                self.scaler.update()
                step += 1
                n = len(index)
                seen += n
                window_samples += n * self.dist.world
                loss_sum += loss.detach() * n
                if self.task == "classification":
                    correct += (out.detach().argmax(1) == y).sum()
                if step % log_every == 0 or step == self.total_steps:
                    now = self._clock()
                    rate = window_samples / max(now - window_start, 1e-9)
                    window_start, window_samples = now, 0
                    self.emit(
                        "step",
                        {"epoch": epoch + 1, "step": step, "loss": value, "lr": lr, "samples_per_s": rate},
                    )
                    done = step - start_step
                    eta = (now - started) / done * (self.total_steps - step) if done else 0.0
                    self.emit(
                        "progress",
                        {
                            "fraction": step / self.total_steps,
                            "eta_s": eta,
                            "step": step,
                            "total_steps": self.total_steps,
                        },
                    )
                    if now >= next_resources:
                        next_resources = now + self.resource_interval_s
                        self.emit("resources", self._resources(process))
            epoch_ended = self._clock()
            totals = self._epoch_totals(loss_sum, correct, seen)
            metrics = self._epoch_metrics(totals)
            if step < (epoch + 1) * self.steps_per_epoch:
                # max_steps cut this epoch short: a full resume trains the rest of it, and must
                # judge it whole, from the verdicts as they stood before this partial look.
                self.loop_state["cut_epoch"] = {**at_start, "totals": totals}
            last_metrics = metrics
            self.emit(
                "epoch",
                {
                    "epoch": epoch + 1,
                    "step": step,
                    "metrics": metrics,
                    "duration_s": self._clock() - epoch_started,
                },
            )
            stop_early = False
            if early["patience"]:
                watched = metrics[early["metric"]]
                if improved(watched, self.loop_state["early_best"], early["mode"], early["min_delta"]):
                    self.loop_state["early_best"], self.loop_state["bad_epochs"] = watched, 0
                else:
                    self.loop_state["bad_epochs"] += 1
                    stop_early = self.loop_state["bad_epochs"] >= early["patience"]
            self.loop_state["epoch"], self.loop_state["step"] = epoch + 1, step
            finished = stop_early or step >= self.total_steps or epoch + 1 == self.epochs
            self._maybe_checkpoint(epoch + 1, step, metrics, final=finished)
            if stop_early:
                self._say_stopped_early(epoch + 1)
            if finished:
                break
        weights = weights_bytes(self.model) if self.dist.leader else None
        return Outcome("succeeded", self.loop_state["epoch"], step, last_metrics, weights)

    def _carried_epoch(self) -> tuple[float, float, int]:
        """Going on part way through an epoch cut short by max_steps: put back the early-stopping
        and keep-best state from before its partial look (else the epoch would count twice) and
        return the sums of its batches trained already, for this rank to start from (the leader
        takes the totals of every rank; the epoch's end adds them up across ranks)."""
        cut = self.loop_state.pop("cut_epoch", None)
        if cut is None:
            # A checkpoint an older tesserad took holds no cut epoch: its verdicts stand.
            return 0.0, 0.0, 0
        self.loop_state.update({key: cut[key] for key in _EPOCH_VERDICTS})
        loss_total, correct_total, count = cut["totals"]
        if not self.dist.leader:
            return 0.0, 0.0, 0
        return float(loss_total), float(correct_total), int(count)

    def _resume_position(self) -> tuple[int, int]:
        """The epoch index to train from and how many of its batches were trained already. A
        checkpoint counts its epoch as done, but the final one of a job that reached max_steps
        mid-epoch was taken part way through it: a job with more steps going on from it (a full
        spec.resume_from) trains the rest of that epoch, in the same order (drawn from the seed
        and the epoch alone), as the uninterrupted job would have. Going on from it with no step
        left (the same max_steps) trains nothing, as before."""
        epoch, step = int(self.loop_state["epoch"]), int(self.loop_state["step"])
        steps_per_epoch = int(self.steps_per_epoch)
        if step < min(epoch * steps_per_epoch, self.total_steps):
            return divmod(step, steps_per_epoch)
        return epoch, 0

    def _say_stopped_early(self, epoch: int) -> None:
        """The line that says why the job stops, with its facts for GetJob (Jobs.early_stop). The
        metric last improved `patience` epochs ago: bad_epochs counts the epochs since."""
        early = self.config["early_stopping"]
        patience = early["patience"]
        stopped = {
            "metric": early["metric"],
            "mode": early["mode"],
            "best": self.loop_state["early_best"],
            "best_epoch": epoch - patience,
            "epoch": epoch,
            "patience": patience,
            "min_delta": early["min_delta"],
        }
        message = (
            f"early stopping after epoch {epoch}: {early['metric']} did not improve on its best, "
            f"{stopped['best']:.6g} after epoch {stopped['best_epoch']}, by more than {early['min_delta']} "
            f"for {patience} epoch{'s' if patience != 1 else ''}"
        )
        self.emit("log", {"level": "info", "message": message, "early_stopping": stopped})

    def _maybe_checkpoint(self, epoch: int, step: int, metrics: dict[str, float], final: bool) -> None:
        policy = self.config["checkpoints"]
        periodic = epoch % policy["every_n_epochs"] == 0
        best = False
        if policy["keep_best_metric"]:
            value = metrics[policy["keep_best_metric"]]
            if improved(value, self.loop_state["best"], policy["keep_best_mode"], 0.0):
                self.loop_state["best"], best = value, True
        if not (periodic or best or final) or not self.dist.leader:
            return
        reason = "final" if final else "best" if best else "periodic"
        data = checkpoint_bytes(self.model, self.optimizer, self.loop_state, self.scaler)
        self.save_checkpoint(
            data,
            {
                "epoch": epoch,
                "step": step,
                "reason": reason,
                "periodic": periodic,
                "best": best,
                "metrics": metrics,
            },
        )

    def _epoch_totals(
        self, loss_sum: torch.Tensor, correct: torch.Tensor, seen: int
    ) -> tuple[float, float, float]:
        """The epoch's loss sum, correct count and sample count over every rank."""
        totals = torch.stack(
            [loss_sum.float(), correct.float(), torch.tensor(float(seen), device=self.device)]
        )
        if self.dist.world > 1:
            torch.distributed.all_reduce(totals)
        loss_total, correct_total, count = totals.tolist()
        return loss_total, correct_total, count

    def _epoch_metrics(self, totals: tuple[float, float, float]) -> dict[str, float]:
        loss_total, correct_total, count = totals
        metrics = {"train_loss": loss_total / max(count, 1)}
        if self.task == "classification":
            metrics["train_accuracy"] = correct_total / max(count, 1)
        if self.val_indices is not None and len(self.val_indices):
            metrics.update(self._validate(self.val_indices))
        return metrics

    @torch.no_grad()
    def _validate(self, val_indices: torch.Tensor) -> dict[str, float]:
        """Every rank scores the whole validation split, so all ranks agree on early stopping."""
        self.model.eval()
        batch = max(self.config["batch_size"], 256)
        outs, ys = [], []
        for first in range(0, len(val_indices), batch):
            index = val_indices[first : first + batch].to(self.device)
            with self._autocast():
                outs.append(self.model(self.inputs[index]).float())
            ys.append(self.targets[index])
        out, y = torch.cat(outs), torch.cat(ys)
        metrics = {"val_loss": float(self.loss_fn(out, y))}
        if self.task == "classification":
            metrics["val_accuracy"] = float((out.argmax(1) == y).float().mean())
        else:
            error = out - y
            metrics["val_mae"] = float(error.abs().mean())
            metrics["val_rmse"] = float(error.pow(2).mean().sqrt())
            variance = (y - y.mean(0)).pow(2).sum()
            metrics["val_r2"] = float(1 - error.pow(2).sum() / variance) if variance > 0 else 0.0
        return metrics

    def _autocast(self) -> torch.autocast:
        dtype = self.autocast_dtype
        return torch.autocast(self.device.type, dtype=dtype or torch.float32, enabled=dtype is not None)

    def _resources(self, process: psutil.Process) -> dict[str, Any]:
        gpu: dict[str, int] = {}
        if self.device.type == "cuda":
            gpu[f"cuda:{self.device.index}"] = int(torch.cuda.memory_allocated(self.device))
        return {
            "cpu_percent": process.cpu_percent(),
            "rss_bytes": process.memory_info().rss,
            "gpu_memory_bytes": gpu,
        }


def device_for(kind: str, indices: list[int], rank: int) -> torch.device:
    if kind == "cuda":
        return torch.device(f"cuda:{indices[rank]}")
    return torch.device("cpu")
