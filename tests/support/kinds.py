"""What kind of test each test module holds: the one table that assigns the kind markers.

The kinds, registered in pyproject.toml (pytest runs with ``--strict-markers``):

- ``unit``: runs no process of dev8 and needs no root; the fast loop is ``pytest -m unit``.
- ``e2e``: runs dev8 as a real process (``dev8 run`` or another ``dev8`` command).
- ``root``: needs root (creates users, chowns, unshares namespaces, mounts).
- ``system``: needs a system program beyond Python: podman, Chromium, sshd, Go or code-server.
- ``slow``: takes many seconds (fuzzing, memory rounds, long runs) whatever else it needs.

A test is ``unit`` exactly when it is none of the others, so the fast loop stays fast.
conftest.py marks every collected test from ``MODULES`` (its module's kinds) unless ``TESTS`` or
the test's own marks say otherwise; test_test_kinds.py fails when a test module is missing
here or an entry names nothing.
"""

from __future__ import annotations

from collections.abc import Iterable

UNIT = "unit"
E2E = "e2e"
ROOT = "root"
SYSTEM = "system"
SLOW = "slow"
#: Every kind marker, each with what it means (registered in pyproject.toml too).
KINDS = {
    UNIT: "no process of dev8, no root",
    E2E: "runs dev8 as a real process",
    ROOT: "needs root (users, chown, unshare, mounts)",
    SYSTEM: "needs podman, Chromium, sshd, Go or code-server",
    SLOW: "takes many seconds (still part of the full test command)",
}

U: frozenset[str] = frozenset({UNIT})
E: frozenset[str] = frozenset({E2E})
R: frozenset[str] = frozenset({ROOT})
ER: frozenset[str] = frozenset({E2E, ROOT})
ES: frozenset[str] = frozenset({E2E, SYSTEM})
RS: frozenset[str] = frozenset({ROOT, SYSTEM})
ERS: frozenset[str] = frozenset({E2E, ROOT, SYSTEM})
SY: frozenset[str] = frozenset({SYSTEM})
S: frozenset[str] = frozenset({SLOW})

#: Test module (file name without .py) -> the kinds of its tests.
MODULES: dict[str, frozenset[str]] = {
    "test_actors_actor": U,
    "test_actors_backoff": U,
    "test_actors_bus": U,
    "test_actors_mailbox": U,
    "test_actors_supervisor": U,
    "test_alert_rules": SY,
    "test_alerts": U,
    "test_api": U,
    "test_architecture_imports": U,
    "test_architecture_tree": E,
    "test_benchmarks_smoke": E,
    "test_chaos": E,
    "test_cli": U,
    "test_codeserver": U,
    "test_config": U,
    "test_conformance": ER,
    "test_connections": U,
    "test_dashboard": ES,
    "test_dev8_faults": E,
    "test_dev8_pid1": ER,
    "test_dev8_run": E,
    "test_docs": E,
    "test_documents": U,
    "test_e2e_connections": E,
    "test_e2e_metrics": ERS,
    "test_e2e_secrets": ER,
    "test_e2e_workspace": ERS,
    "test_fuzz_api": E,
    "test_fuzz_config": S,
    "test_go_agent": ES,
    "test_health": U,
    "test_hostile_pid1": ER,
    "test_hostile_user": R,
    "test_hostile_vault": U,
    "test_http_server": U,
    "test_images": ERS,
    "test_init": U,
    "test_k8s": U,
    "test_layering": U,
    "test_locks": U,
    "test_metrics_health": U,
    "test_preflight": U,
    "test_probes": U,
    "test_process_actor": U,
    "test_process_spawn": U,
    "test_reload": U,
    "test_resources": ER,
    "test_secrets_atomicity": R,
    "test_secrets_injector": U,
    "test_secrets_keyvault": U,
    "test_secrets_never_leak": U,
    "test_secrets_rotator": U,
    "test_secrets_settings": U,
    "test_secrets_tools": U,
    "test_security": ER,
    "test_sshd": RS,
    "test_storage": R,
    "test_supervision_faults": E,
    "test_test_kinds": U,
    "test_webhooks": E,
}

#: Tests whose kinds differ from their module's: module -> kinds -> test (function or Class) names.
TESTS: dict[str, dict[frozenset[str], tuple[str, ...]]] = {
    "test_chaos": {
        ER: ("test_seeded_chaos_keeps_every_invariant",),
        U: (
            "test_fault_sequence_is_a_function_of_the_seed",
            "test_parse_signal",
        ),
    },
    "test_cli": {
        E: (
            "test_operator_commands_over_tcp",
            "test_every_failure_is_one_line_and_non_zero",
            "test_token_and_unix_socket",
            "test_events_follow_a_restart_and_resume_across_a_dev8_restart",
        ),
    },
    "test_codeserver": {
        RS: (
            "test_editor_serves_and_stops_promptly",
            "test_password_auth_takes_the_password_from_the_environment",
        ),
    },
    "test_conformance": {
        E: (
            "test_a_service_that_cannot_start_gives_up_clearly_and_dev8_stays",
            "test_stopping_a_service_takes_its_whole_process_group",
            "test_what_an_exited_service_leaves_behind_is_cleared",
        ),
    },
    "test_docs": {
        U: ("test_every_guide_is_linked_from_the_readme_and_has_tested_commands",),
    },
    "test_fuzz_api": {
        U: ("test_raise_fd_limit_lifts_the_soft_limit_to_the_hard_one",),
    },
    "test_hostile_pid1": {
        U: (
            "test_a_flooding_service_cannot_crowd_out_dev8s_own_lines",
            "test_backoff_delay_never_overflows",
            "test_a_crash_streak_past_1025_restarts_costs_only_its_capped_delay",
            "test_all_zero_backoff_is_held_to_the_documented_floor",
        ),
        E: ("test_every_catchable_signal_is_acted_on_or_ignored_when_not_pid1",),
    },
    "test_hostile_user": {
        ERS: ("test_the_users_environment_never_reaches_root_nor_is_read_back_from_their_file",),
        U: (
            "test_the_refused_names_and_the_accepted_ones",
            "test_the_environment_probe_reads_what_a_process_got",
        ),
    },
    "test_hostile_vault": {
        S: ("test_a_hung_vault_cannot_starve_the_next_pass",),
        E: (
            "test_a_missing_required_secret_holds_the_services_not_the_workspace",
            "test_rotations_restart_without_using_up_intensity_failures_are_refused_and_counted",
        ),
    },
    "test_http_server": {
        S: ("test_replay_to_clients_that_do_not_read_holds_no_copy_and_memory_returns",),
        E: ("test_dev8_refuses_to_listen_beyond_loopback_without_a_token",),
    },
    "test_init": {
        R: ("test_as_real_pid1",),
    },
    "test_preflight": {
        R: (
            "test_a_command_its_user_may_not_execute",
            "test_the_path_is_searched_as_the_user",
        ),
        E: (
            "test_config_check_and_run_refuse_in_one_line",
            "test_every_command_takes_the_config_the_same_way",
            "test_a_taken_api_port_stops_run_at_once_and_check_warns",
            "test_a_service_failing_at_once_ends_fatal_with_its_last_output",
        ),
    },
    "test_process_spawn": {
        R: (
            "test_a_service_as_dev8s_own_user_keeps_dev8s_identity",
            "test_a_service_as_another_user_gets_its_uid_gid_groups_and_environment",
            "test_without_setpriv_the_switch_falls_back_to_popen",
            "test_a_program_that_cannot_run_is_a_spawn_error_behind_setpriv",
            "test_a_program_found_relative_to_the_working_directory_and_path_runs",
            "test_the_path_is_searched_as_the_user_not_as_root",
            "test_a_missing_working_directory_is_still_reported_as_such",
            "test_the_spawn_vforks_unless_popen_must_switch_identity",
        ),
    },
    "test_secrets_injector": {
        R: (
            "test_writes_every_file_with_content_mode_and_owner",
            "test_a_wrong_mode_or_owner_is_fixed_in_place",
            "test_user_settings_survive_a_merge",
            "test_authorized_keys_keeps_user_keys_and_replaces_ours",
            "test_bytes_that_are_not_utf8_survive_a_gitconfig_merge",
        ),
    },
    "test_secrets_tools": {
        RS: ("test_ssh_logs_in_with_the_injected_key",),
    },
    "test_security": {
        U: ("test_tokens_are_compared_with_hmac_compare_digest",),
    },
    "test_sshd": {
        S: ("test_unreadable_or_linked_host_keys_are_replaced_not_followed",),
        U: (
            "test_settings_refuse_values_that_would_change_the_config",
            "test_command",
            "test_banner_probe_fails_fast_on_closed_port",
            "test_banner_probe_times_out_on_silent_port",
            "test_banner_probe_rejects_other_protocols",
        ),
    },
}


def kinds_of(module: str, test: str, own: Iterable[str] = ()) -> frozenset[str]:
    """The kinds of `module`'s `test`: its own kind marks, else TESTS, else its module's.

    A test marked ``slow`` by hand is never ``unit``, whatever its module's kinds.
    """
    marks = frozenset(own)
    kinds = marks & (KINDS.keys() - {SLOW})
    if not kinds:
        kinds = MODULES.get(module, frozenset())
        for listed, tests in TESTS.get(module, {}).items():
            if test in tests:
                kinds = listed
    if SLOW in marks:
        kinds = (kinds - {UNIT}) | {SLOW}
    return kinds
