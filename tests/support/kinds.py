"""Which tests are slow or start processes, in one table (applied by conftest.py at collection).

``process``: the test starts Python child processes or servers (the real CLI in a subprocess, a worker
pool, DDP ranks, a browser). ``slow``: more than ~20 s on a loaded 2-core machine. ``make test-fast``
deselects both; ``make test`` runs everything. A key is a test module's file name without .py (test
module names are unique across tests/unit, tests/integration and tests/conformance), or ``module::test``
for one test.
"""

PROCESS = {
    "test_interruptions",
    "test_train_ddp",
    "test_serve_browser",
    "test_bench_export::test_bench_export_options_reach_the_measuring_process",
    "test_bench_export::test_runner_hands_the_parsed_options_to_the_child",
    "test_bench_ablation::test_micro_ablation_writes_real_numbers_and_resumes",
    "test_bench_ablation::test_run_folder_lock_is_exclusive_across_processes",
    "test_bench_ablation::test_stopping_the_pool_stops_its_runs",
}

SLOW = {
    "test_interruptions",
    "test_train_ddp",
    "test_train_resume",
    "test_serve_browser",
    "test_export",
    "test_conformance",
    "test_conformance_trajectory",
    "test_bench_speed",
    "test_bench_serve",
    "test_bench_export::test_bench_export_options_reach_the_measuring_process",
    "test_bench_ablation::test_micro_ablation_writes_real_numbers_and_resumes",
    "test_time_budget::test_two_minute_budget_stops_within_ten_percent_and_keeps_its_best_model",
    # benchmarks/tests (marked in the file too: tests/conftest.py does not reach that folder)
    "test_compare::test_tiny_comparison_writes_real_results_and_skips_finished_arms",
}


def kinds_of(module: str, name: str) -> set[str]:
    """The markers of test ``name`` (without parameters) in ``module`` (file name without .py)."""
    keys = {module, f"{module}::{name}"}
    return {kind for kind, table in (("process", PROCESS), ("slow", SLOW)) if keys & table}
