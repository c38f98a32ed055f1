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
    """``--cache-dir`` and ``--data-memory`` of `run` and `worker`: this host's cache and device budget.

    Each is handed on as its environment variable when parsed, which the worker processes this
    one starts inherit (a Ray worker on another node reads its own host's). The names are
    ``search.trial.cache.CACHE_DIR_ENV`` and ``search.trial.memory.DATA_MEMORY_ENV``, spelled out:
    importing those modules would cost every command's parse a second or more.
    """
    p.add_argument("--cache-dir", action=_Environ, env="CNNSEARCH_CACHE_DIR", type=_absolute,
                   help="where decoded image datasets are cached (default: $CNNSEARCH_CACHE_DIR, else "
                        "$XDG_CACHE_HOME/cnnsearch or ~/.cache/cnnsearch)")
    p.add_argument("--data-memory", action=_Environ, env="CNNSEARCH_DATA_MEMORY_MB", type=POSITIVE_FLOAT,
                   metavar="MB", help="megabytes a trial's images may take on its device; more are streamed from "
                                      "the cache (default: half the free device memory, host memory on CPU)")


class _Environ(argparse.Action):
    """Store the value and set environment variable ``env`` to it."""

    def __init__(self, *args, env: str, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.env = env

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        import os

        setattr(namespace, self.dest, values)
        os.environ[self.env] = str(values)


def _absolute(text: str) -> str:
    import os

    return os.path.abspath(os.path.expanduser(text))


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
