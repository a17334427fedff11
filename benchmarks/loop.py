"""Closed-loop performance: detection throughput, per-block cost, reaction latency.

Run ``python benchmarks/loop.py [--quick]``. Parts:

(a) :func:`bench_detection` - band-pass + detection throughput as a real-time
    factor on one core, in 100 ms blocks (goals: 64 ch at 25 kHz >= 200x,
    1024 ch at 30 kHz >= 3x), next to SpikeInterface's band-pass +
    ``detect_peaks`` on the same data when ``spikeinterface`` is importable
    (e.g. run this script with a venv that has it).
(b) :func:`bench_block_cost` - CPU time of ``SpikeDetector.process()`` per 1 ms
    block at 64 channels, Python overhead included (goal <= 100 us).
(c) :func:`bench_reaction_latency` - spike-to-pulse latency through the engine, on
    the in-process simulator and (``--serial``) through ``serial://`` to a
    ``mea-control sim serve --pty`` subprocess with the same seed.

Data are synthetic: noise of ~7 uV rms in the 300-3000 Hz band plus spikes of
40-150 uV (raw trough) at ~5 Hz per channel. Timings are from a shared machine:
each figure is the best (throughput) or the distribution (per block) of a few
runs, an order of magnitude rather than a promise.
"""

from __future__ import annotations

import os

os.environ.setdefault("NUMBA_NUM_THREADS", "1")  # one core; set before numba loads

import argparse  # noqa: E402
import contextlib  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

from mea_control.dsp import DetectorConfig, SpikeDetector  # noqa: E402
from mea_control.protocol import Parameter, Protocol  # noqa: E402
from mea_control.types import Block, StimPattern, StimPulse  # noqa: E402

UV_PER_BIT = 0.195
WHITE_NOISE_UV = 15.0  # white noise of this rms has ~7 uV rms in 300-3000 Hz at 25-30 kHz
SPIKE_RATE_HZ = 5.0
GOALS_RTF = {(64, 25_000.0): 200.0, (1024, 30_000.0): 3.0}
GOAL_BLOCK_US = 100.0


def synthetic_recording(
    n_samples: int, n_channels: int, sample_rate: float, seed: int = 0
) -> np.ndarray:
    """int16 samples (n_samples, n_channels): band noise ~7 uV rms plus 40-150 uV spikes."""
    rng = np.random.default_rng(seed)
    data = np.empty((n_samples, n_channels), np.int16)
    step = int(sample_rate // 10)
    for i in range(0, n_samples, step):
        chunk = rng.standard_normal((min(step, n_samples - i), n_channels), dtype=np.float32)
        data[i : i + step] = np.round(chunk * np.float32(WHITE_NOISE_UV / UV_PER_BIT))
    t = (np.arange(int(2e-3 * sample_rate)) - int(0.4e-3 * sample_rate)) / sample_rate * 1e3
    shape = -np.exp(-0.5 * (t / 0.1) ** 2) + 0.2 * np.exp(-0.5 * ((t - 0.5) / 0.4) ** 2)
    n_spikes = int(SPIKE_RATE_HZ * n_samples / sample_rate * n_channels)
    starts = rng.integers(0, n_samples - len(shape), n_spikes)
    channels = rng.integers(0, n_channels, n_spikes)
    amps = rng.uniform(40.0, 150.0, n_spikes) / UV_PER_BIT
    for s, c, a in zip(starts, channels, amps, strict=True):
        seg = data[s : s + len(shape), c].astype(np.float64) + a * shape
        data[s : s + len(shape), c] = np.clip(np.round(seg), -32768, 32767)
    return data


def _blocks(data: np.ndarray, size: int) -> list[Block]:
    return [Block(i, data[i : i + size], UV_PER_BIT) for i in range(0, len(data), size)]


def _ours_rtf(data: np.ndarray, sample_rate: float, repeats: int) -> tuple[float, int]:
    """Best real-time factor of SpikeDetector over 100 ms blocks, and the spike count."""
    blocks = _blocks(data, int(sample_rate // 10))
    duration = len(data) / sample_rate
    best, n_spikes = 0.0, 0
    for _ in range(repeats):
        det = SpikeDetector(data.shape[1], sample_rate, UV_PER_BIT)
        t0 = time.perf_counter()
        n_spikes = sum(len(det.process(b)[1]) for b in blocks)
        best = max(best, duration / (time.perf_counter() - t0))
    return best, n_spikes


def _spikeinterface_rtf(
    data: np.ndarray, sample_rate: float, direction: str, repeats: int
) -> tuple[float, int] | None:
    """SpikeInterface band-pass (order 3) + detect_peaks(by_channel) in 100 ms chunks, 1 job.

    Noise levels are computed before the clock starts (SpikeInterface needs them
    up front); ``direction="forward-backward"`` is its zero-phase default.
    """
    try:
        import spikeinterface.core as sc
        from spikeinterface.preprocessing import bandpass_filter
        from spikeinterface.sortingcomponents.peak_detection import detect_peaks
    except ImportError:
        return None
    rec = sc.NumpyRecording([data], sampling_frequency=sample_rate)
    rec.set_channel_gains(UV_PER_BIT)
    rec.set_channel_offsets(0.0)
    filtered = bandpass_filter(
        rec, freq_min=300.0, freq_max=3000.0, filter_order=3, direction=direction, dtype="float32"
    )
    noise = sc.get_noise_levels(
        filtered,
        return_in_uV=False,
        random_slices_kwargs={"num_chunks_per_segment": 5, "seed": 0},
        n_jobs=1,
        progress_bar=False,
    )
    job = {"n_jobs": 1, "chunk_duration": "100ms", "progress_bar": False}
    kwargs = {"peak_sign": "neg", "detect_threshold": 5, "exclude_sweep_ms": 1.0}
    duration = len(data) / sample_rate
    best, n_spikes = 0.0, 0
    for _ in range(repeats):
        t0 = time.perf_counter()
        peaks = detect_peaks(
            filtered,
            method="by_channel",
            method_kwargs={**kwargs, "noise_levels": noise},
            job_kwargs=job,
        )
        best = max(best, duration / (time.perf_counter() - t0))
        n_spikes = len(peaks)
    return best, n_spikes


def bench_detection(quick: bool = False) -> dict:
    """(a) Filter + detection real-time factor on one core, 100 ms blocks."""
    results = {}
    for (n_ch, fs), goal in GOALS_RTF.items():
        seconds = (2.0 if quick else 10.0) if n_ch <= 64 else (1.0 if quick else 3.0)
        data = synthetic_recording(int(seconds * fs), n_ch, fs, seed=n_ch)
        repeats = 3 if quick else 5
        rtf, n_spk = _ours_rtf(data, fs, repeats)
        row = {"seconds": seconds, "rtf": rtf, "goal_rtf": goal, "spikes": n_spk}
        # SpikeInterface is slow at 1024 channels: give it the first second only, once.
        si_data = data if n_ch <= 64 else data[: int(fs)]
        for direction, key in (("forward-backward", "si_zero_phase"), ("forward", "si_causal")):
            si = _spikeinterface_rtf(si_data, fs, direction, repeats=1 if n_ch > 64 else 2)
            row[key] = None if si is None else {"rtf": si[0], "spikes": si[1]}
        results[f"{n_ch} ch @ {fs / 1000:g} kHz"] = row
    return results


def bench_block_cost(quick: bool = False) -> dict:
    """(b) CPU time per 1 ms block (25 samples x 64 channels), ``process()`` overhead included.

    A stimulus is blanked every 100 ms, as in a closed loop. Times are thread CPU
    time per call after a 1 s warm-up (noise estimate in place).
    """
    fs, n_ch, size = 25_000.0, 64, 25
    seconds = 4.0 if quick else 20.0
    data = synthetic_recording(int((seconds + 1.0) * fs), n_ch, fs, seed=1)
    det = SpikeDetector(n_ch, fs, UV_PER_BIT, DetectorConfig())
    blocks = _blocks(data, size)
    warm = int(fs // size)
    for b in blocks[:warm]:
        det.process(b)
    cpu_ns = np.empty(len(blocks) - warm, np.int64)
    wall_ns = np.empty_like(cpu_ns)
    clock_cpu, clock_wall = time.thread_time_ns, time.perf_counter_ns
    for i, b in enumerate(blocks[warm:]):
        if i % 100 == 50:
            det.blank(b.start_sample + 5)
        c0, w0 = clock_cpu(), clock_wall()
        det.process(b)
        cpu_ns[i] = clock_cpu() - c0
        wall_ns[i] = clock_wall() - w0
    empty = Block(0, np.zeros((0, n_ch), np.int16), UV_PER_BIT)
    t0 = time.perf_counter_ns()
    for _ in range(2000):
        det.process(empty)
    overhead_us = (time.perf_counter_ns() - t0) / 2000 / 1e3
    cpu_us, wall_us = cpu_ns / 1e3, wall_ns / 1e3
    return {
        "blocks": len(cpu_ns),
        "cpu_us_median": float(np.median(cpu_us)),
        "cpu_us_mean": float(cpu_us.mean()),
        "cpu_us_p99": float(np.percentile(cpu_us, 99)),
        "cpu_us_max": float(cpu_us.max()),
        "wall_us_median": float(np.median(wall_us)),
        "wall_us_p99": float(np.percentile(wall_us, 99)),
        "wall_us_max": float(wall_us.max()),
        "empty_block_us": overhead_us,
        "goal_us": GOAL_BLOCK_US,
    }


# ---------------------------------------------------------------------------------------
# ---------------------------------------------------------------------------------------
class React(Protocol):
    """Stimulate as soon as a spike is seen (the first in a batch, after a 20 ms hold-off),
    on the stimulating electrodes in turn (the first ``electrodes`` of them; 0: all), so
    that the rate limits are never reached; finish after ``reactions`` (and 5 % more, as
    some may be dropped late)."""

    parameters = {"reactions": Parameter(int, 1000, range=(1, 1_000_000)),
                  "electrodes": Parameter(int, 0, range=(0, 4096))}

    def setup(self, ctx):
        self.ready_at = 0
        self.count = 0
        self.pulse = StimPulse.biphasic(5.0, 200.0)
        targets = [i for i in range(ctx.n_channels) if ctx.layout.can_stimulate[i]]
        self.targets = targets[:self.p.electrodes] if self.p.electrodes else targets

    def on_spikes(self, ctx, spikes):
        if ctx.now < self.ready_at:
            return
        target = self.targets[self.count % len(self.targets)]
        ctx.stimulate(StimPattern.single([target], self.pulse),
                      trigger_sample=int(spikes.sample.min()))
        self.count += 1
        self.ready_at = ctx.now + ctx.samples(0.02)
        if self.count > 1.05 * self.p.reactions:
            ctx.finish()


def bench_reaction_latency(quick: bool = False, record: bool = False,
                           device: str = "sim://?seed=7") -> dict:
    """(c) Spike-to-pulse latency through the engine on the simulator, in device samples.

    A protocol stimulates as soon as it sees a spike (the first in a batch, after
    a 20 ms hold-off; the stimulated electrode rotates so the rate limits are
    never reached). Latency is from the spike's sample to the sample at which
    the simulated device executed the pulse. The run is in real time: a pattern
    sent after the device has moved on to a later block runs there, so a loop
    that falls behind shows in these figures. ``record``: with a Recorder
    writing the run to an NWB file in a temporary folder, as ``--record`` does.
    ``device``: the device URL (``serial://`` to a served simulator, see
    :func:`served_device`).
    """
    from mea_control.driver import open_driver
    from mea_control.engine import Engine, EngineConfig

    n_reactions = 200 if quick else 1000
    driver = open_driver(device)
    driver.open()
    # a quick (smoke) run must not depend on how busy the machine is: its watchdog lets
    # the loop fall behind by seconds; a full run keeps the default (200 ms)
    watchdog = {"watchdog_ms": 10_000.0} if quick else {}
    engine = Engine(driver, React(reactions=n_reactions),
                    EngineConfig(fast=False, duration_s=600.0, **watchdog))
    with tempfile.TemporaryDirectory() as folder:
        if record:
            from mea_control.recording.writer import Recorder, run_provenance

            engine.sinks.append(Recorder(Path(folder) / "bench.nwb", engine.info,
                                         run_provenance(engine.describe())))
        summary = engine.run()
    driver.close()
    lat = engine.stats.latency_samples()
    if not len(lat):
        raise RuntimeError(f"no reaction was executed on {device}: watchdog trips "
                           f"{summary['watchdog_trips']}, dropped {summary['stims_dropped']}, "
                           f"error {summary['error']}")
    block = engine.block_samples
    out = {
        "reactions": int(len(lat)),
        "dropped_late": summary["stims_dropped"],
        "block_samples": block,
        "p50_samples": float(np.percentile(lat, 50)),
        "p99_samples": float(np.percentile(lat, 99)),
        "max_samples": int(lat.max()),
        "p99_blocks": float(np.percentile(lat, 99)) / block,
        "goal_p99_blocks": 2.0,
        "loop_cost_us": summary["loop_cost_us"],
    }
    ms = 1000.0 / engine.info.sample_rate
    print(f"(c) reaction latency on {device} in real time, spike -> pulse execution, "
          f"1 ms blocks{', recording to NWB' if record else ''}")
    print(f"  {out['reactions']} reactions ({out['dropped_late']} more dropped: the loop "
          "answered after the device had passed the booked sample)")
    print(f"  p50 {out['p50_samples']:.0f} samples "
          f"({out['p50_samples'] * ms:.2f} ms), p99 {out['p99_samples']:.0f} samples "
          f"({out['p99_blocks']:.2f} blocks; goal <= 2), max {out['max_samples']}")
    cost = out["loop_cost_us"]
    print(f"  loop CPU per block during the run: p50 {cost['p50']:.0f} us, "
          f"p99 {cost['p99']:.0f} us, max {cost['max']:.0f} us")
    return out


@contextlib.contextmanager
def served_device(seed: int = 7):
    """``mea-control sim serve --pty`` in a subprocess; yields its serial:// URL."""
    command = [sys.executable, "-m", "mea_control.cli", "sim", "serve", "--pty",
               "--seed", str(seed)]
    server = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                              text=True)
    try:
        line = server.stdout.readline()
        if not line.startswith("serving on "):
            raise RuntimeError(f"sim serve did not start: {line!r}")
        yield f"serial://{line.split()[-1]}"
    finally:
        server.terminate()
        server.wait(10)


def _fmt_si(cell: dict | None) -> str:
    return "not installed" if cell is None else f"{cell['rtf']:.1f}x ({cell['spikes']} spk)"


def print_detection(results: dict) -> None:
    print("(a) band-pass + detection, real-time factor on one core, 100 ms blocks")
    print(f"  {'data':<18}{'mea-control':>24}{'goal':>12}  {'SI zero-phase':<22}{'SI causal':<22}")
    for name, r in results.items():
        ours = f"{r['rtf']:.1f}x ({r['spikes']} spk)"
        verdict = "ok" if r["rtf"] >= r["goal_rtf"] else "MISS"
        print(
            f"  {name:<18}{ours:>24}{r['goal_rtf']:>7.0f}x {verdict:<4} "
            f"{_fmt_si(r['si_zero_phase']):<22}{_fmt_si(r['si_causal']):<22}"
        )
    lengths = ", ".join(f"{name}: {r['seconds']:g} s" for name, r in results.items())
    print(f"  synthetic data: {lengths}")
    print(
        "  SI = SpikeInterface: bandpass_filter(order 3) + detect_peaks(by_channel, 5 MAD),\n"
        "  n_jobs=1, 100 ms chunks, noise levels computed before timing; 1 s of data at 1024 ch.\n"
        "  SI zero-phase is its default band-pass (forward-backward): NOT causal, unusable\n"
        "  online. SI causal is direction='forward', per chunk with margins, no carried state."
    )


def print_block_cost(r: dict) -> None:
    verdict = "ok (p99)" if r["cpu_us_p99"] <= r["goal_us"] else "MISS (p99)"
    print("(b) SpikeDetector.process() per 1 ms block (25 samples x 64 ch), blanking every 100 ms")
    print(
        f"  CPU us: median {r['cpu_us_median']:.1f}  mean {r['cpu_us_mean']:.1f}  "
        f"p99 {r['cpu_us_p99']:.1f}  max {r['cpu_us_max']:.1f}   goal <= {r['goal_us']:.0f} "
        f"{verdict}"
    )
    print(
        f"  wall us: median {r['wall_us_median']:.1f}  p99 {r['wall_us_p99']:.1f}  "
        f"max {r['wall_us_max']:.1f}   ({r['blocks']} blocks; empty block "
        f"{r['empty_block_us']:.1f} us = Python overhead)"
    )


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="shorter data, fewer repeats")
    parser.add_argument("--record", action="store_true",
                        help="(c) only, with the run recorded to NWB as --record does")
    parser.add_argument("--serial", action="store_true",
                        help="(c) only: in-process sim:// next to serial:// to `sim serve --pty`")
    args = parser.parse_args(argv)
    if args.record:
        return {"reaction_latency": bench_reaction_latency(args.quick, record=True)}
    if args.serial:
        results = {"reaction_latency": bench_reaction_latency(args.quick)}
        with served_device() as url:
            results["reaction_latency_serial"] = bench_reaction_latency(args.quick, device=url)
        return results
    results = {"detection": bench_detection(args.quick)}
    print_detection(results["detection"])
    results["block_cost"] = bench_block_cost(args.quick)
    print_block_cost(results["block_cost"])
    results["reaction_latency"] = bench_reaction_latency(args.quick)
    return results


if __name__ == "__main__":
    main()
