"""Generate docs/cli.md and docs/output-schema.md from the code, so they never drift.

``python -m batchvision.docs`` rewrites them (``make docs``); ``--check`` exits 1 when a
file on disk differs from what the code generates (a test runs it). The CLI reference
walks the click commands; the schema tables come from each task's pyarrow schemas
(batchvision/tasks), and every column, manifest field and error code must have a description below.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import click
import pyarrow as pa

from batchvision.io import names

#: Meaning of every output column, across tasks (a schema column missing here fails a test).
COLUMNS: dict[str, str] = {
    "id": "Stable id: the path relative to the INPUT folder it came from (a file or "
    "manifest entry: the path as given; a manifest row without a path: `MANIFEST#row=N`, "
    "rows counted from 1 without the header). Unique within an output. A local name that "
    "is not valid UTF-8 is written in its `file:` form (see below).",
    "path": "Where the image was read from (local path or `s3://` URI); a local name that "
    "is not valid UTF-8 in its `file:` form (see below).",
    "status": "`ok` or `error`.",
    "error": "`code: message` on error rows (codes below), else null.",
    "width": "Image width as displayed (after EXIF rotation); null on error rows.",
    "height": "Image height as displayed (after EXIF rotation); null on error rows.",
    "label": "Top-1 class name.",
    "score": "Top-1 softmax probability.",
    "topk_ids": "Class indices of the top `--top-k` classes, best first.",
    "topk_labels": "Class names of the top `--top-k` classes, best first.",
    "topk_scores": "Softmax probabilities of the top `--top-k` classes, best first.",
    "mask": "The class map as a PNG (mode L, or 16-bit when there are more than 256 "
    "classes), pixel value = class id; null when written to `mask_path`.",
    "mask_path": "Path of the class-map PNG (relative paths are relative to the output "
    "folder); null when the PNG is inline in `mask`.",
    "mask_width": "Width of the class map (the model's output size).",
    "mask_height": "Height of the class map.",
    "classes": "The classes present in the mask: `id`, `label` and the `fraction` of mask pixels.",
    "detections": "The objects found, best first (at most `--max-detections`, each scoring at "
    "least `--score-threshold`): `label_id` and `label` (the model's class; torchvision's "
    "COCO ids count the background as 0), `score`, and the box `x0`, `y0` (top left) and "
    "`x1`, `y1` (bottom right) in pixels of the image as displayed (after EXIF rotation, "
    "the same pixels as `width` and `height`), as float32. A list of structs: DuckDB "
    "`unnest`, pandas, Polars and pyarrow read it as is. Null on error rows.",
    "num_detections": "How many entries `detections` has.",
    "embedding": "The image's embedding vector, `d` = the manifest's `embedding_dim` values "
    "(a fixed-size list: Lance and LanceDB search it; pandas and pyarrow read it as a list; "
    "DuckDB reads a Parquet part's column as `FLOAT[]`: cast it to `FLOAT[d]`).",
}

#: Top-level fields of `_manifest.json` (a field the code writes but missing here fails a test).
MANIFEST: dict[str, str] = {
    "model": "Resolved model name (`source:arch`).",
    "task": "`classify`, `segment`, `embed`, `zero-shot` (the `classify` columns) or "
    "`detect`: which columns the parts have.",
    "weights": "Weights as resolved (enum name or absolute checkpoint path).",
    "weights_kind": "`pretrained`, `checkpoint` or `random`.",
    "num_classes": "Number of classes the model outputs.",
    "labels_sha": "First 16 hex digits of the SHA-256 of the class names (resume check).",
    "preprocess": "Resize, crop, interpolation, mean and std actually used.",
    "top_k": "`--top-k`.",
    "normalize": "`--normalize` (embed: L2-normalised embeddings); `--resume` must match.",
    "score_threshold": "`--score-threshold` (detect); `--resume` of a detect run must match.",
    "max_detections": "`--max-detections` (detect); `--resume` of a detect run must match.",
    "mask_dir": "`--mask-dir` as an absolute path (segment), else `null`; `--resume` must match.",
    "keep_columns": "`--keep-columns`: input columns copied into the rows after the task's "
    "columns (Parquet columns with their types; WebDataset members as text); `--resume` "
    "must match.",
    "shards": "How samples were found in shard inputs: `image_key`, `image_column`, "
    "`id_column`, `manifest`; `--resume` must match.",
    "format": "Part file format: `parquet`, `csv`, `jsonl` or `lance`.",
    "lance": "`--format lance` only: the Lance dataset's folder (`results.lance`) and the "
    "version the last run committed (`null` before any row is committed).",
    "embedding_dim": "`embed` only: the size `d` of each embedding.",
    "embedding_type": "`embed` only: the embedding column's Arrow type, "
    "`fixed_size_list<float32>[d]`; `--resume` must match (earlier versions wrote "
    "`list<float32>`).",
    "labels": "`segment`: the class names, in pixel-value order; `zero-shot`: the classes "
    "(`--classes` or `--classes-file`), in id order; `detect`: the class names, in "
    "`label_id` order.",
    "prompt": "`zero-shot` only: `--prompt`; `--resume` must match.",
    "class_scores": "`zero-shot` only: `softmax` over the classes (CLIP) or `sigmoid` per "
    "class (SigLIP); `--resume` must match.",
    "inputs": "The INPUT arguments.",
    "s3_endpoint": "`--s3-endpoint` (or `AWS_ENDPOINT_URL`) used; `null` for AWS itself. "
    "Credentials are never recorded.",
    "versions": "batchvision, Python, torch, torchvision, Pillow, NumPy, pyarrow versions.",
    "runs": "One record per run into the folder (see below).",
    "status": "Status of the last run: `running`, `complete`, `interrupted` or `failed` "
    "(writing the output failed, e.g. a full disk: exit code 4; `--resume` finishes it).",
    "run_ids": "Ids of every run whose parts are in the folder (the local engine's part "
    "names carry them: `part-RUN-NNNNN-nROWS-cCRC32.EXT`); `--overwrite` deletes only those "
    "parts, and the units' parts of a folder whose manifest records runs.",
    "counts": "`ok`, `error`, `rows_written` from the part files; `skipped` by the last run.",
    "runtime": "What ran the model in the last run: `runtime` (`torch`, `onnxruntime` or "
    "`openvino`); for the latter two also `precision`, the ONNX export's cache `export_key`, "
    "whether it came from the cache (`export_cached`), its `export_seconds` and "
    "`export_bytes`; with `--precision int8` also `int8_key`, `int8_cached`, `calibration` "
    "(`images`, `first_id`, `last_id`, `ids_digest` of the images it was calibrated on), "
    "`agreement` (`measure`: top-1 agreement, or mean cosine for embeddings; its `value` "
    "on `images` held-apart images from `first_id` on; `min_agreement`; `cached`: measured by "
    "an earlier run of the same int8 model on the same images) and `int8_seconds` "
    "(quantizing and measuring).",
}

#: Fields of each `runs[]` record.
RUN_FIELDS: dict[str, str] = {
    "run_id": "This run's id, carried by the names of the parts it wrote.",
    "finished_at": "UTC time the run ended.",
    "status": "`complete`, `interrupted` or `failed` (then `error_message` says why).",
    "error_message": "`failed` runs only: what failed (e.g. no space left) and how to resume.",
    "parts_set_aside": "Damaged parts `--resume` found and renamed `_damaged-NAME` (their "
    "rows were written again); delete them once no longer needed. With the Ray engine: "
    "second parts of one unit, deleted (their rows are in the part kept).",
    "config": "The full RunConfig of that run.",
    "device": "Device used, e.g. `cpu`, `cuda:0`.",
    "precision": "`fp32`, `bf16`, `fp16` or `int8`.",
    "tf32": "Whether fp32 matmuls and convolutions could use TF32 tensor cores: `--precision "
    "fp32` on CUDA (used on Ampere and newer GPUs), unless `NVIDIA_TF32_OVERRIDE=0` was set.",
    "runtime": "The manifest's `runtime` record as it was for this run.",
    "workers": "Decode workers (the Ray engine: worker actors, at most).",
    "batch_size": "Batch size the model finally ran at: `--batch-size`, the size "
    "`--batch-size auto` chose, or less where a batch ran out of device memory and was "
    "split in halves (the Ray engine: the smallest any worker actor kept).",
    "batch_size_search": "`--batch-size auto` only (else `null`): the chosen `size`, the "
    "`trials` (`batch_size`, `images_per_second` on synthetic input on the device; 0 where "
    "memory ran out) and the search's `seconds`.",
    "decode_device": "Where images were decoded and resized: `cpu`, or the model's CUDA "
    "device (`--decode-device`).",
    "decode_threads": "Threads that decoded on the CPU in the model's process between model "
    "batches (`--decode-threads`; the Ray engine: in each worker actor); 0: decoded in the "
    "worker processes.",
    "ok": "Rows with status ok written by this run.",
    "error": "Error rows written by this run.",
    "skipped": "Files skipped while listing (hidden, or not an image name).",
    "already_done": "Ids skipped because an earlier run wrote them (`--resume`; the Ray "
    "engine skips whole units).",
    "rows_written": "Rows this run committed.",
    "parts_written": "Part files this run committed.",
    "wall_seconds": "Wall time of the run.",
    "images_per_second": "(ok + error) / wall_seconds.",
    "stage_seconds": "Time per stage: read, and decode when done in worker processes, summed "
    "over workers; decode on the model process's threads or on the device is wall time.",
    "error_codes": "Error rows by code.",
}

#: Error codes of error rows (the text before the colon of `error`).
ERROR_CODES: dict[str, str] = {
    "bad_manifest_row": "A .csv or .parquet manifest row whose `path` is empty or null "
    "(its id is `MANIFEST#row=N`).",
    "not_found": "The file does not exist (or vanished after listing).",
    "unreadable": "The file exists but cannot be read (permissions, I/O error).",
    "not_a_file": "The path is not a regular file (a folder, FIFO, device or socket); it is "
    "never opened. A symlink to a regular file is read.",
    "empty": "The file is 0 bytes.",
    "not_image": "The content is not a recognised image format.",
    "truncated": "The image data ends early.",
    "corrupt": "The image data is damaged.",
    "too_large": "Over a limit, decided before the cost is paid (the message gives the "
    "sizes): more bytes than `--max-file-bytes` (from the file's or object's size, before "
    "reading), more pixels than `--max-pixels` (from the header, before decoding), or a "
    "resize larger than `--max-input-pixels` (from the header and the preprocessing).",
    "decode_failed": "Any other decoder failure.",
    "shard_truncated": "A WebDataset shard cut short or with a corrupt header, or a Parquet "
    "shard that cannot be read on: one row, id `SHARD`, after the rows of the samples read "
    "before the damage; `--resume` reads the shard again (its part name ends `-e<N>d`).",
    "no_image": "A WebDataset sample with no member whose extension is in `--image-key` "
    "(the message lists what it has).",
    "bad_shard": "A Parquet shard without what the run asks for (no image column, no "
    "`--id-column`): one row, id `FILE`.",
}


# --- CLI reference ------------------------------------------------------------------------


def _type_name(param: click.Parameter) -> str:
    if isinstance(param, click.Option) and param.is_flag:
        return "flag"
    t = param.type
    if isinstance(t, click.Choice):
        return " \\| ".join(f"`{c}`" for c in t.choices)
    if isinstance(t, click.IntRange | click.FloatRange):
        kind = "integer" if isinstance(t, click.IntRange) else "number"
        if t.min is not None and t.max is not None:
            return f"{kind} in [{t.min}, {t.max}]"
        return f"{kind} >= {t.min}" if t.min is not None else f"{kind} <= {t.max}"
    return {"text": "text", "integer": "integer", "float": "number", "boolean": "bool"}.get(
        t.name, t.name
    )


def _default(param: click.Parameter) -> str:
    if param.required:
        return "required"
    value = param.default
    unset = value is None or type(value).__name__ == "Sentinel" or callable(value)
    if isinstance(param, click.Option) and param.is_flag:
        if param.secondary_opts:
            return f"`{param.opts[0] if value is True else param.secondary_opts[0]}`"
        return "on" if value is True else "off"
    return "" if unset else f"`{value}`"


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def _command_md(cmd: click.Command, ctx: click.Context) -> list[str]:
    usage = " ".join(cmd.collect_usage_pieces(ctx))
    lines = [f"## `{ctx.command_path}`", "", "```", f"{ctx.command_path} {usage}", "```", ""]
    if cmd.help:
        lines += [cmd.help.strip(), ""]
    args = [p for p in cmd.params if isinstance(p, click.Argument)]
    opts = [p for p in cmd.params if isinstance(p, click.Option)]
    if args:
        lines += ["| argument | type | required |", "|---|---|---|"]
        for a in args:
            name = a.make_metavar(ctx) if _takes_ctx(a) else a.human_readable_name
            lines.append(f"| `{name}` | {_type_name(a)} | {'yes' if a.required else 'no'} |")
        lines.append("")
    lines += ["| option | type | default | description |", "|---|---|---|---|"]
    for o in [*opts, cmd.get_help_option(ctx)]:
        if o is None or o.hidden:
            continue
        names = ", ".join(f"`{n}`" for n in [*o.opts, *o.secondary_opts])
        help_ = _cell(o.help or "")
        lines.append(f"| {names} | {_type_name(o)} | {_default(o)} | {help_} |")
    return [*lines, ""]


def _takes_ctx(param: click.Parameter) -> bool:
    import inspect

    return "ctx" in inspect.signature(param.make_metavar).parameters


def cli_reference() -> str:
    """docs/cli.md: every command with its usage, arguments and options."""
    from batchvision.cli import cli

    root = click.Context(cli, info_name="batchvision", **cli.context_settings)
    lines = [
        "# CLI reference",
        "",
        "<!-- Generated by `python -m batchvision.docs` (`make docs`) from the click commands;"
        " do not edit. -->",
        "",
        "```",
        f"batchvision {' '.join(cli.collect_usage_pieces(root))}",
        "```",
        "",
        (cli.help or "").strip(),
        "",
        "| command | summary |",
        "|---|---|",
    ]
    names = cli.list_commands(root)
    for name in names:
        cmd = cli.commands[name]
        lines.append(f"| [`{name}`](#batchvision-{name}) | {_cell(cmd.get_short_help_str(200))} |")
    lines += ["", "Global options: `--version`, `-h`/`--help`.", ""]
    for name in names:
        cmd = cli.commands[name]
        lines += _command_md(cmd, click.Context(cmd, info_name=name, parent=root))
    lines += [
        "Exit codes (every command): 0 ok; 1 internal error; 2 bad usage (one line on stderr: "
        "`batchvision: error: ...`); 3 `run` finished but more than `--max-error-rate` of the "
        "images failed; 130 interrupted (Ctrl-C, SIGINT); 143 terminated (SIGTERM).",
        "",
    ]
    return "\n".join(lines)


# --- output schema ------------------------------------------------------------------------


def type_name(t: pa.DataType) -> str:
    """A pyarrow type as the docs write it: ``list<float32>``, ``struct<id int32, ...>``."""
    if pa.types.is_fixed_size_list(t):  # the size is the model's: ``d``
        return f"fixed_size_list<{type_name(t.value_type)}>[d]"
    if pa.types.is_list(t) or pa.types.is_large_list(t):
        return f"list<{type_name(t.value_type)}>"
    if pa.types.is_struct(t):
        return "struct<" + ", ".join(f"{f.name} {type_name(f.type)}" for f in t) + ">"
    return {"float": "float32", "double": "float64", "halffloat": "float16"}.get(str(t), str(t))


def task_schemas() -> dict[str, pa.Schema]:
    """Every registered task's output schema, by task name."""
    from batchvision import tasks

    return {k: v for name in tasks.list_tasks() for k, v in tasks.get_task(name).schemas().items()}


def undocumented_columns() -> list[str]:
    """Columns of a task's schema that have no description in ``COLUMNS``."""
    return sorted({f.name for s in task_schemas().values() for f in s} - COLUMNS.keys())


def _table(rows: dict[str, str], head: str) -> list[str]:
    return [f"| {head} | meaning |", "|---|---|"] + [
        f"| `{k}` | {_cell(v)} |" for k, v in rows.items()
    ]


def output_schema() -> str:
    """docs/output-schema.md: columns per task, manifest fields, error codes."""
    missing = undocumented_columns()
    if missing:
        raise ValueError(f"columns without a description in batchvision/docs.py: {missing}")
    lines = [
        "# Output schema",
        "",
        "<!-- Generated by `python -m batchvision.docs` (`make docs`) from the pyarrow schemas "
        "of each task (batchvision/tasks); do not edit. -->",
        "",
        "`batchvision run --output DIR` writes part files "
        "(`--format parquet|csv|jsonl`), one row per input image, in plain Arrow types: "
        "pyarrow, pandas or DuckDB read them without batchvision. With `--format lance` the "
        "same rows, in the same types, are the Lance dataset `DIR/results.lance` (read it "
        "with `lance.dataset(...)`), and each part file (`.lance.json`) is the record of its "
        "fragments; the dataset version readers see is committed at the end of each run. "
        "The local engine names parts "
        "`part-<run id>-<seq>-n<rows>-c<crc32>.<ext>`; the Ray engine writes one part per "
        "unit of work (`--part-rows` inputs), named after the unit: "
        "`part-u<input>-<unit>-f<inputs crc32>-n<rows>-e<errors>-c<crc32>.<ext>` (e.g. "
        "`part-u000-00000042-f1a2b3c4d-n10000-e3-c5e6f7a8b.parquet`; `f` is a CRC-32 of the "
        "unit's inputs, so `--resume` can refuse inputs that changed). A part is written "
        "under a hidden temporary name and renamed when complete (on S3, uploaded in one "
        "PUT), so readers never see half a part. "
        "Files whose names start with `_` or `.` are not data (pyarrow and pandas skip them "
        "when reading the folder); `_report.html` is the default output of "
        "`batchvision report`.",
        "",
        "In CSV, list and struct columns are JSON text. CSV and JSON carry no types: read "
        "them with DuckDB, or with pyarrow given the schema (an all-empty `error` column "
        "would otherwise be typed null).",
        "",
    ]
    for task, schema in task_schemas().items():
        lines += [
            f"## `{task}` rows",
            "",
            "| column | type | nullable | meaning |",
            "|---|---|---|---|",
        ]
        for f in schema:
            null = "yes" if f.nullable else "no"
            lines.append(
                f"| `{f.name}` | `{type_name(f.type)}` | {null} | {_cell(COLUMNS[f.name])} |"
            )
        lines.append("")
    lines += ["## File names that are not UTF-8", "", names.RULE, ""]
    lines += ["## Error codes", "", "An error row's `error` is `code: message`.", ""]
    lines += [*_table(ERROR_CODES, "code"), ""]
    lines += ["## `_manifest.json`", "", "Written atomically at the start and end of each run.", ""]
    lines += [*_table(MANIFEST, "field"), "", "### `runs[]` records", ""]
    lines += [*_table(RUN_FIELDS, "field"), ""]
    return "\n".join(lines)


GENERATED = {"cli.md": cli_reference, "output-schema.md": output_schema}


def main(argv: list[str] | None = None) -> int:
    """Write (or with ``--check``, compare) the generated docs; returns the exit code."""
    parser = argparse.ArgumentParser(prog="python -m batchvision.docs", description=__doc__)
    parser.add_argument("--out", default="docs", help="docs folder [default: docs]")
    parser.add_argument("--check", action="store_true", help="exit 1 if a file is stale")
    args = parser.parse_args(argv)
    stale = []
    for name, make in GENERATED.items():
        path = Path(args.out) / name
        text = make()
        current = path.read_text(encoding="utf-8") if path.exists() else None
        if current == text:
            continue
        if args.check:
            stale.append(str(path))
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
            print(f"wrote {path}")  # a developer tool, not library code
    if stale:
        print(f"stale: {', '.join(stale)}; run `make docs`", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
