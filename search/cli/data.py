"""`cnnsearch data prepare|list|clear`: the decoded cache of image datasets, ahead of time, listed, removed."""

from __future__ import annotations

import argparse

from search.cli.flags import POSITIVE_FLOAT, POSITIVE_INT, Command


def add_data_args(p: argparse.ArgumentParser) -> Command:
    sub = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    prepare = sub.add_parser("prepare", help="decode a dataset into the cache now (e.g. before starting workers)")
    prepare.add_argument("dataset", help="imagefolder:PATH or csv:FILE (see `cnnsearch datasets`)")
    prepare.add_argument("--image-size", type=POSITIVE_INT,
                         help="side in pixels (default: the median side of the images, clamped to 32..224)")
    listing = sub.add_parser("list", help="the cached datasets: images, size, bytes, folder")
    clear = sub.add_parser("clear", help="remove cached datasets (all, or those of one dataset)")
    clear.add_argument("dataset", nargs="?", help="only this dataset's entries (any image size)")
    for action in (prepare, listing, clear):
        action.add_argument("--cache-dir", help="the cache directory (default: $CNNSEARCH_CACHE_DIR, else "
                                                "$XDG_CACHE_HOME/cnnsearch or ~/.cache/cnnsearch)")
    return cmd_data


def host_data_args(p: argparse.ArgumentParser) -> None:
    """``--cache-dir`` and ``--data-memory`` of `run` and `worker`: this host's cache and device budget."""
    p.add_argument("--cache-dir", help="where decoded image datasets are cached (default: $CNNSEARCH_CACHE_DIR, else "
                                       "$XDG_CACHE_HOME/cnnsearch or ~/.cache/cnnsearch)")
    p.add_argument("--data-memory", type=POSITIVE_FLOAT, metavar="MB",
                   help="megabytes a trial's images may take on its device; more are streamed from the cache "
                        "(default: half the free device memory, host memory on CPU)")


def apply_host_data_args(args: argparse.Namespace) -> None:
    """Hand ``--cache-dir`` and ``--data-memory`` on as environment variables, which local workers inherit."""
    import os

    from search.trial.cache import CACHE_DIR_ENV
    from search.trial.data import DATA_MEMORY_ENV

    if args.cache_dir:
        os.environ[CACHE_DIR_ENV] = os.path.abspath(os.path.expanduser(args.cache_dir))
    if args.data_memory is not None:
        os.environ[DATA_MEMORY_ENV] = str(args.data_memory)


def cmd_data(args: argparse.Namespace) -> int:
    from search.trial.cache import cache_root, clear_entries, entry_bytes, list_entries
    from search.trial.memory import format_bytes

    if args.action == "prepare":
        return _prepare(args)
    if args.action == "list":
        entries = list_entries(args.cache_dir)
        if not entries:
            print(f"no cached datasets in {cache_root(args.cache_dir)}")
        for folder, header in entries:
            shape = "x".join(str(side) for side in header["shape"][1:])
            skipped = header["skipped_unreadable"] + header["skipped_too_large"]
            print(f"{header['dataset']}  {header['shape'][0]} images of {shape}, {len(header['classes'])} classes, "
                  f"{skipped} skipped  {format_bytes(entry_bytes(folder))}  {folder}")
        return 0
    from search.trial.datasets import absolute_dataset_name

    dataset = absolute_dataset_name(args.dataset) if args.dataset else None
    sizes = {folder: entry_bytes(folder) for folder, _ in list_entries(args.cache_dir)}
    removed = clear_entries(args.cache_dir, dataset)
    freed = sum(sizes.get(folder, 0) for folder in removed)
    print(f"removed {len(removed)} cached datasets ({format_bytes(freed)}) from {cache_root(args.cache_dir)}")
    return 0


def _prepare(args: argparse.Namespace) -> int:
    from search.trial.cache import cache_root, entry_folder
    from search.trial.datasets import absolute_dataset_name, is_decoded_from_files, load_dataset

    name = absolute_dataset_name(args.dataset)
    if not is_decoded_from_files(name):
        load_dataset(name)  # an unknown name is refused here, with the list of known ones
        print(f"dataset {name!r} is not decoded from image files; it needs no cache")
        return 0
    images = load_dataset(name, image_size=args.image_size, cache_dir=args.cache_dir)
    shape = "x".join(str(side) for side in images.images.shape[1:])
    folder = entry_folder(cache_root(args.cache_dir), name, args.image_size)
    print(f"{name}: {len(images.labels)} images of {shape}, {len(images.classes)} classes, cached in {folder}")
    return 0
