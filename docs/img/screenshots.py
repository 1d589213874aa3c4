"""The screenshots in docs/img/: a report page (jobs/report.py) and Prometheus query results.

    .venv/bin/python docs/img/screenshots.py --report PAGE.html --out docs/img/report-tune.png
    .venv/bin/python docs/img/screenshots.py --prometheus http://127.0.0.1:9090 --query 'EXPR' --out F.png

Chromium (headless, through tests/browser.py) renders the page; Prometheus's own web UI draws the query as a
graph over the last --range.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import urllib.parse
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tests"))

from browser import open_page  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--report", type=Path, help="an HTML report page to screenshot")
    parser.add_argument("--prometheus", help="a Prometheus base URL")
    parser.add_argument("--query", help="the PromQL expression to graph")
    parser.add_argument("--range", default="30m", help="the graph's time range (Prometheus syntax)")
    parser.add_argument("--width", type=int, default=1400)
    parser.add_argument("--out", type=Path, required=True, help="the PNG to write")
    args = parser.parse_args()
    if bool(args.report) == bool(args.prometheus):
        parser.error("give --report or --prometheus (with --query)")
    if args.prometheus:
        if not args.query:
            parser.error("--prometheus needs --query")
        params = urllib.parse.urlencode({"g0.expr": args.query, "g0.tab": "0", "g0.range_input": args.range,
                                         "g0.stacked": "0", "g0.show_exemplars": "0"})
        target = f"{args.prometheus.rstrip('/')}/classic/graph?{params}"  # Debian ships only the classic UI
    else:
        target = args.report
    with tempfile.TemporaryDirectory() as workdir, open_page(target, Path(workdir), width=args.width) as page:
        if args.prometheus:  # the UI fetches the series and draws them after the page itself has loaded
            page.wait_for("document.querySelector('.graph svg path') !== null", timeout=60)
            time.sleep(3)
        png = page.screenshot()
    temp = args.out.with_suffix(".tmp")
    temp.write_bytes(png)
    temp.replace(args.out)
    print(f"wrote {args.out} ({len(png)} bytes)")


if __name__ == "__main__":
    main()
