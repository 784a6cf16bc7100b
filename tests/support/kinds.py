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
    "test_allocator::test_policy_serves_large_blocks_from_the_heap",
    "test_allocator::test_without_the_policy_glibc_maps_large_blocks_and_user_settings_win",
    # benchmarks/tests/test_gpu_check.py (marked in the file too)
    "test_gpu_check::test_without_cuda_it_refuses_at_once_with_one_line",
    "test_gpu_check::test_cpu_smoke_run_of_every_part",
    "test_gpu_check::test_a_failing_part_is_recorded_and_the_next_ones_run",
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
    "test_gpu_check::test_cpu_smoke_run_of_every_part",
    "test_gpu_check::test_a_failing_part_is_recorded_and_the_next_ones_run",
}


def kinds_of(module: str, name: str) -> set[str]:
    """The markers of test ``name`` (without parameters) in ``module`` (file name without .py)."""
    keys = {module, f"{module}::{name}"}
    return {kind for kind, table in (("process", PROCESS), ("slow", SLOW)) if keys & table}
