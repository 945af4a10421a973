"""`pmcqa worker` around a stand-in ingestor from `worker_fakes`: what worker tests start as a subprocess.

    python tests/worker/run_fake_worker.py --ingestor slow --workers 2 --verbose

Settings come from the PMCQA_* environment, as for `pmcqa worker`; only the ingestor differs.
"""

from __future__ import annotations

import argparse
import logging

import worker_fakes

from pmcqa.core.logs import configure_logging
from pmcqa.core.settings import Settings
from pmcqa.ingest.worker import IngestorFactory, run_worker

INGESTORS: dict[str, IngestorFactory] = {
    "slow": worker_fakes.factory,
    "efetch": worker_fakes.efetch_factory,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ingestor", choices=sorted(INGESTORS), required=True)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--verbose", action="store_true")
    args = parser.parse_args()
    settings = Settings()
    # As `pmcqa worker` does: PMCQA_LOG_FORMAT=json gives JSON lines.
    configure_logging(settings.log_format, logging.INFO if args.verbose else logging.WARNING)
    run_worker(settings, workers=args.workers, factory=INGESTORS[args.ingestor])


if __name__ == "__main__":
    main()
