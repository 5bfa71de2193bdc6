"""The command line: `anysat-stac ingest|pretrain|evaluate|embed|promote|inspect|stack` (see `main`).

Each command's entry function is `modelops.cli.<command>.main(argv) -> exit status`; `jobs/<command>.py` calls
the same function, so `python jobs/<x>.py` and `ray job submit -- python jobs/<x>.py` behave as the installed
command. Exit status: 0 done, 1 the work failed, 2 a config or endpoint problem found before any work.
"""
