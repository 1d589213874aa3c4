"""The benchmark's markdown report, built from the same dict that is written as JSON."""

from __future__ import annotations


def _epochs(rows: list[dict]) -> list[str]:
    if not rows:
        return []
    lines = [f"## 1. Training epoch: our loop vs the reference mechanics (CorrSH {rows[0].get('bits', '')} bits)", "",
             f"Mean seconds per epoch over {rows[0]['epochs']} epochs after a warm-up; speed-up = reference / ours. "
             "Val precision@100 (tie-aware, the same metric for both) after those epochs, from the same "
             "initial weights.", "",
             "| dataset | docs | nnz/row | batch | ours s/epoch | reference s/epoch | speed-up | ours docs/s | "
             "ours val p@100 | reference val p@100 | ours eval s | reference eval s | eval speed-up |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['dataset']} | {r['docs']:,} | {r['nnz_per_row']:.1f} | {r['batch_size']} | "
                     f"{r['ours_epoch_s']:.3f} | {r['reference_epoch_s']:.3f} | {r['epoch_speedup']:.1f}x | "
                     f"{r['ours_docs_per_s']:,.0f} | {r['ours_val_precision']:.4f} | "
                     f"{r['reference_val_precision']:.4f} | {r['ours_eval_s']:.3f} | {r['reference_eval_s']:.3f} | "
                     f"{r['eval_speedup']:.1f}x |")
    return lines + [""]


def _step(profile: dict | None, compiled: list[dict]) -> list[str]:
    if not profile and not compiled:
        return []
    lines = ["## 2. One training step at the first batch size: where the time goes", ""]
    if profile:
        launch_bound = profile["launch_bound"]
        verdict = "n/a (no device events)" if launch_bound is None else ("yes" if launch_bound else "no")
        lines += [f"Batch {profile['batch_size']}: {profile['step_ms']:.3f} ms per step (wall, unprofiled, mean of "
                  f"{profile['steps']}); device busy {profile['device_busy_ms_per_step']:.3f} ms per step "
                  f"({100 * profile['device_busy_fraction']:.0f}%), {profile['kernel_launches_per_step']:.0f} "
                  f"kernel launches per step. Launch-bound (device busy < 50% of the step): {verdict}.", "",
                  "```", profile["table"].rstrip(), "```", ""]
    if compiled:
        lines += ["torch.compile on the model's forward (the loop unchanged); speed-up = off / variant:", "",
                  "| variant | ms/step | speed-up | warm-up s (compile + recompiles) | error |",
                  "|---|---:|---:|---:|---|"]
        for r in compiled:
            if "error" in r:
                lines.append(f"| {r['mode']} | | | | {r['error'].replace('|', '/')} |")
            else:
                lines.append(f"| {r['mode']} | {r['step_ms']:.3f} | {r['speedup']:.2f}x | {r['warmup_s']:.1f} | |")
        lines.append("")
    return lines


def _packing(rows: list[dict]) -> list[str]:
    if not rows:
        return []
    lines = [f"## 3. Concurrent trainings on one device (one process per trial, batch {rows[0]['batch_size']}, "
             f"{rows[0]['epochs_each']} epochs each)", "",
             f"Aggregate = all processes' documents / wall time from a common start; ratio against "
             f"{rows[0]['processes']} process(es) in this run.", "",
             "| processes | aggregate docs/s | vs fewest | per-process docs/s | wall s |",
             "|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['processes']} | {r['aggregate_docs_per_s']:,.0f} | {r['vs_fewest']:.2f}x | "
                     f"{r['per_process_docs_per_s']:,.0f} | {r['wall_s']:.1f} |")
    return lines + [""]


def _search(rows: list[dict], backends: list[str]) -> list[str]:
    if not rows:
        return []
    lines = [f"## 4. Hamming top-{rows[0]['k']} over random codes", "",
             f"{rows[0]['queries']:,} queries per backend; the XOR-and-sort baseline runs "
             f"{rows[0]['reference_queries']:,} queries over at most {rows[0]['reference_database']:,} codes. "
             "Code pairs/s = queries x database / s.", "",
             "| bits | database | " + " | ".join(f"{b} s | {b} pairs/s | {b} / reference" for b in backends)
             + " | reference pairs/s |",
             "|---:|---:|" + "---:|---:|---:|" * len(backends) + "---:|"]
    for r in rows:
        cells = " | ".join(f"{r[f'{b}_s']:.3f} | {r[f'{b}_pairs_per_s']:.2e} | {r[f'{b}_vs_reference']:,.0f}x"
                           for b in backends)
        lines.append(f"| {r['bits']} | {r['database']:,} | {cells} | {r['reference_pairs_per_s']:.2e} |")
    return lines + [""]


def markdown(report: dict) -> str:
    lines = [f"# corrhash benchmark on {report['device']}", "",
             f"torch {report['torch']}, python {report['python']}, {report['date']}. Command:", "",
             "```", report["command"], "```", "",
             "Every ratio compares two measurements from this run, on this device.", ""]
    lines += _epochs(report["epochs"])
    lines += _step(report["step_profile"], report["compile"])
    lines += _packing(report["packing"])
    lines += _search(report["search"], report["search_backends"])
    seconds = ", ".join(f"{name} {value:.0f}s" for name, value in report["section_seconds"].items())
    lines += [f"Section wall times: {seconds}."]
    for section, error in report["errors"].items():
        lines.append(f"Section {section} failed: {error}")
    if report["skipped"]:
        lines.append(f"Skipped (past the run's deadline): {', '.join(report['skipped'])}.")
    return "\n".join(lines + [""])
