"""Strict test environment: x64 on, rank and dtype promotion strict, warnings are errors
(pyproject.toml), hypothesis profiles by BPREF_PROFILE.

The suite runs ``bpref check`` and ``bpref verify`` in many fresh interpreters, each compiling
the same handful of programs, and pytest-xdist's workers compile many of the same programs too.
They all share one persistent compilation cache (BPREF_CACHE_DIR, docs/performance.md), a
directory made for this run and removed after it, unless the caller names one. A hit returns
the executable that the same program compiled to; compilations are counted with the hits, so
the budgets of tests/test_compilation.py hold either way.
"""

import atexit
import fnmatch
import importlib.util
import os
import shutil
import tempfile

import jax
import pytest

jax.config.update("jax_enable_x64", True)
jax.config.update("jax_numpy_rank_promotion", "raise")
jax.config.update("jax_numpy_dtype_promotion", "strict")

if "BPREF_CACHE_DIR" not in os.environ and "PYTEST_XDIST_WORKER" not in os.environ:
  os.environ["BPREF_CACHE_DIR"] = tempfile.mkdtemp(prefix="bpref-test-xla-")  # the workers inherit it
  atexit.register(shutil.rmtree, os.environ["BPREF_CACHE_DIR"], ignore_errors=True)
if "BPREF_CACHE_DIR" in os.environ:
  from bpref import compilation  # noqa: E402

  compilation.use_cache()  # the workers share it with each other and with the fresh interpreters

from hypothesis import HealthCheck, Phase, settings  # noqa: E402

settings.register_profile(
    "ci", derandomize=True, max_examples=30, deadline=None, print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.register_profile(
    "dev", max_examples=15, deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.register_profile(  # scripts/mutate.py: the dev draws, a failure reported unshrunk
    "mutate", max_examples=15, deadline=None,
    phases=(Phase.explicit, Phase.reuse, Phase.generate),
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.register_profile(
    "thorough", max_examples=500, deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.load_profile(os.environ.get("BPREF_PROFILE", "ci" if os.environ.get("CI") else "dev"))

# ---------------------------------------------------------------- two tiers
# The README's test command runs the fast tier; `--tier deep` runs the rest, `--tier all` both.
# A test is deep when its node id matches a DEEP pattern (fnmatch) and no FAST_SAMPLE pattern:
# the fast tier keeps one case of most deep tests, so that each piece of code stays exercised.
# docs/verification.md has the mutation table of the fast tier alone.

DEEP = {
    "tests/test_padding.py::test_the_narrow_finite_differences_give_to_the_bit_*": "four "
    "finite-difference programs (the fast tier compares the narrow autodiff witness to the bit)",
    # end-to-end commands in fresh interpreters, compiling the same programs again
    "tests/test_compilation.py::test_verify_quick_compiles_within_its_budget": "verify --quick end to end",
    "tests/test_compilation.py::test_a_default_check_compiles_within_its_budget[[]float32*": "second dtype",
    "tests/test_compilation.py::test_an_uncreatable_cache_dir_is_a_usage_error": "fresh interpreter",
    "tests/test_compilation.py::test_the_persistent_cache_answers_a_second_cli_run": "two interpreters",
    "tests/test_ops_workers.py::test_a_seed_gives_one_verdict_and_minimal_case_on_one_and_two_workers[[]right]":
    "worker processes (the planted case stays fast)",
    "tests/test_ops_workers.py::test_the_cli_on_two_workers_prints_the_report_of_one": "two CLI runs",
    "tests/test_ops_workers.py::test_a_seed_gives_one_verdict_on_a_dask_cluster": "a Dask cluster",
    "tests/test_ops_workers.py::test_a_hang_in_a_chunk_is_the_failure_at_its_place_in_the_order":
    "two worker pools, each waiting out a timeout (the engine's order of a chunk that hangs stays "
    "fast in test_a_hang_after_a_pass_in_one_chunk_is_still_the_failure, a real hang in "
    "test_wire_ops)",
    "tests/test_compilation.py::test_what_is_stored_is_compiled_afresh_not_read_back_from_jaxs_cache":
    "it clears JAX's caches: the worker's later tests compile again",
    "tests/test_oracle.py::test_cli_*": "fresh interpreters",
    "tests/test_oracle.py::test_workers_give_the_serial_result": "worker processes",
    "tests/test_oracle.py::test_isolated_hang_and_crash_become_reports": "worker processes",
    "tests/test_oracle.py::test_assert_works_inside_a_users_given_test": "a pytest run in a subprocess",
    "tests/test_oracle.py::test_reproducer_script_reruns_the_minimal_case": "fresh interpreter",
    "tests/test_oracle.py::test_docs_adapters_pass": "more examples",
    "tests/test_oracle_textbook.py::test_verdicts_do_not_depend_on_the_callers_x64_setting*": "fresh interpreters",
    "tests/test_oracle_hostile.py::*": "the exhaustive hostile matrix in fresh interpreters (an exiting "
    "candidate stays fast in test_oracle_cli and test_testing)",
    "tests/test_cli.py::test_a_closed_stdout_pipe_ends_quietly*": "fresh interpreters",
    "tests/test_cli.py::test_a_report_into_a_closed_pipe_ends_quietly": "fresh interpreter",
    "tests/test_cli.py::test_python_dash_m_runs_the_cli": "fresh interpreter",
    "tests/test_oracle_cli.py::test_op_candidate_that_ends_its_process_fails[[]segfaults-*": "a second subprocess",
    "tests/test_bench.py::*": "benchmarks in fresh interpreters",
    "tests/test_train.py::*": "training runs",
    "tests/test_gpu_check.py::*": "the device script, run on CPU",
    "tests/test_sharding.py::test_sharded_matches_unsharded_with_all_reduce_and_expected_layouts*": "simulated devices",
    "tests/test_exec.py::test_reference_client_passes_and_its_planted_bug_is_diagnosed[[]*": "building every example client",
    "tests/test_exec.py::test_c_client_passes_in_every_declared_dtype_layout_and_reduction*": "more examples",
    "tests/test_exec.py::test_workers_give_the_serial_verdict_and_minimal_case": "worker processes",
    "tests/test_oracle_outside.py::*": "200-example searches of outside code",
    "tests/test_outside_autodiff.py::*": "every op kind of an outside autodiff library",
    # more examples of what the fast tier checks once
    "tests/test_oracle_mutants.py::test_oracle_catches_and_names_mutant*": "more mutants",
    "tests/test_oracle.py::test_correct_independent_implementations_pass*": "more layouts",
    "tests/test_oracle.py::test_misbehaving_candidate_is_reported_plainly*": "more misbehaviours",
    "tests/test_oracle.py::test_networks_without_biases": "more examples",
    "tests/test_oracle.py::test_maximum_based_relu_is_a_convention_note": "more examples",
    "tests/test_oracle.py::test_wrong_dtype_is_reported": "more examples",
    "tests/test_oracle.py::test_report_prints_enough_digits_to_show_a_small_difference": "more examples",
    "tests/test_ops_outside.py::test_custom_vjp_rules_pass*": "more examples",
    "tests/test_ops_outside.py::test_torch_autograd_passes_every_activation*": "more examples",
    "tests/test_ops_outside.py::test_torch_functions_from_the_docs_pass[[]float32]": "second dtype",
    "tests/test_bridges.py::test_flax_*": "more frameworks",
    "tests/test_bridges.py::test_equinox_*": "more frameworks",
    "tests/test_bridges.py::test_torch_candidate_matches_bpref_on_every_loss_and_activation": "more examples",
    "tests/test_fast.py::test_fused_losses_match_bpref_on_random_saturated_networks*": "more examples",
    "tests/test_fast.py::test_fused_losses_are_exact_on_a_saturated_output*": "more examples",
    "tests/test_fast.py::test_padded_logits_add_exactly_zero*": "more dtypes",
    "tests/test_fast.py::test_fast_matches_bpref_on_each_unpadded_network*": "more examples",
    "tests/test_fast.py::test_a_function_of_fewer_names_gives_the_same_results*": "more examples",
    "tests/test_fast.py::test_one_declared_bucket_gives_the_same_results_and_refuses_what_does_not_fit": "more examples",
    "tests/test_fast.py::test_padding_changes_no_bit_when_arithmetic_is_exact": "more examples",
    "tests/test_verify.py::test_bucketed_outputs_match_the_exact_shape_functions*": "more examples",
    "tests/test_verify.py::test_padded_witness_matches_the_exact_shape_witness": "more examples",
    "tests/test_verify.py::test_verify_device_cpu_runs_there": "verify end to end",
    "tests/test_verify.py::test_verify_reports_every_witness_worst_error": "verify end to end",
    "tests/test_verify.py::test_witness_case_on_a_saturated_tanh_net_shows_jax_grad_error": "more examples",
    "tests/test_finite_diff.py::test_richardson_within_its_error_estimate": "more examples",
    "tests/test_finite_diff.py::test_directional_adjoint_check": "more examples",
    "tests/test_finite_diff.py::test_taylor_remainder_order*": "more examples",
    "tests/test_finite_diff.py::test_central_difference_within_its_bound": "more examples",
    "tests/test_finite_diff.py::test_complex_step_follows_the_kink_conventions": "more examples",
    "tests/test_backprop.py::test_every_public_function_matches_the_witness_under_jit": "more examples",
    "tests/test_backprop.py::test_vmap_over_examples_equals_per_example_grads": "more examples",
    "tests/test_backprop.py::test_vmap_over_an_ensemble_of_params_matches_the_witness": "more examples",
    "tests/test_identities.py::test_lambda_identities": "more examples",
    "tests/test_backprop.py::test_eager_equals_jit_and_matches_the_witness": "more examples",
    "tests/test_finite_diff.py::test_complex_step_gradient_is_exact_to_rounding": "more examples",
    "tests/test_verify.py::test_verify_plot_writes_a_png": "verify end to end",
    "tests/test_activations.py::test_nan_in_x_makes_the_loss_and_every_gradient_nan[[]acts1-*": "more networks",
    "tests/test_activations.py::test_nan_in_x_makes_the_loss_and_every_gradient_nan[[]*float32]": "second dtype",
    "tests/test_oracle_textbook.py::test_textbook_backprop_passes_default_searches[[][12]-*": "more seeds",
    "tests/test_oracle_textbook.py::test_textbook_backprop_passes_default_searches[[]0-float32]": "second dtype",
    "proofs/test_symbolic.py::test_handwritten_recursion_equals_sympy_derivative[[]*-*-*-*]": "depth 3 and more",
    "tests/test_identities.py::test_batch_additivity_and_rank": "more examples",
    "tests/test_tolerance.py::test_model_passes_correct_gradients_and_flags_one_wrong_coordinate[[]float64]": "second dtype",
    "tests/test_tolerance.py::test_low_precision_forward_within_the_model[[]float16]": "second dtype",
    "tests/test_referee.py::test_bpref_within_the_rounding_model_of_the_referee[[]float32]": "second dtype",
    "tests/test_precision.py::test_every_dot_general_carries_the_configured_precision[[]DEFAULT*": "second precision",
    "proofs/test_symbolic.py::test_proven_closed_form_evaluates_to_bpref[[]*-*-*]": "the sympy proofs of depth 3 to 5",
    "proofs/test_symbolic.py::test_proven_closed_form_evaluates_to_bpref[[]3-3]": "the widest depth-2 proof",
    "proofs/test_scaling.py::*": "cost counts of XLA programs",
    # the layer kinds: the fast tier keeps, per kind, a NumPy right candidate in float64 and
    # every classic bug named in float64; the other dtypes, frameworks and seeds run here
    "tests/test_ops_*.py::test_a_right_*_passes[[]*float32*": "second dtype",
    "tests/test_ops_*.py::test_a_right_*_passes[[]custom_vjp*": "a framework's rule, compiled per shape",
    "tests/test_ops_*.py::test_a_right_*_passes[[]torch*": "torch candidates",
    "tests/test_ops_*.py::test_a_custom_vjp_*": "a framework's rule, compiled per shape",
    "tests/test_ops_*.py::test_each_classic_*_bug_fails_with_its_name[[]*float32*": "second dtype",
    "tests/test_ops_block.py::test_gelu_with_erf_is_the_gelu_steps_convention_note": "two more block searches",
    "tests/test_ops_block.py::test_right_layer_functions_pass_inside_the_block[[]float32]": "second dtype",
    "tests/test_ops_block.py::test_an_object_with_the_functions_as_attributes_is_a_candidate": "another block search",
    "proofs/test_pool_symbolic.py::test_maxpool_backward_equals_sympy_derivative_on_every_region": "every region of three windows",
    "tests/test_attention.py::test_jit_and_vmap_give_the_eager_results[[]float32]": "second dtype",
    "tests/test_attention.py::test_backward_matches_jax_vjp[[]*float32]": "second dtype",
    "tests/test_conv.py::test_conv_backward_matches_jax_vjp[[]*float32*": "second dtype",
    "tests/test_batchnorm.py::test_batchnorm_backward_matches_jax_vjp[[]*float32*": "second dtype",
    "tests/test_pool.py::test_maxpool_backward_matches_jax_vjp_and_the_loops[[]*float32*": "second dtype",
    "tests/test_ops.py::test_torch_saturating_backward_passes*": "torch candidates",
    "tests/test_layers.py::test_*_backward_matches_jax_vjp[[]*float32*": "second dtype",
    "tests/test_pool.py::test_dropout_backward_matches_jax_vjp_and_the_exact_value[[]*float32*": "second dtype",
    "tests/test_ops_block.py::test_right_layer_functions_pass_inside_the_block[[]float64]": "a right block "
    "search; the fast tier's block test passes the steps before its bug",
    "proofs/test_pool_symbolic.py::test_maxpool_proof_evaluates_to_bpref": "the region proof evaluated",
    "proofs/test_pool_symbolic.py::test_avgpool_backward_equals_sympy_derivative_and_bpref": "sympy "
    "at four window geometries (2.4 s); tests/test_pool.py checks the layer against autodiff, "
    "torch and loops in the fast tier",
    "tests/test_ops_block.py::test_a_layernorm_bug_is_named_at_the_first_wrong_step": "another block "
    "search (the attention bug's stays fast)",
    "tests/test_ops_block.py::test_a_dense_bug_is_named_at_its_step": "another block search",
    "proofs/test_attention_symbolic.py::test_proven_formula_evaluates_to_bpref*": "the proof evaluated in float64",
    "tests/test_ops_*.py::test_a_right_*_passes[[]*float64*": "more right candidates, windows and "
    "layouts (the fast tier keeps one per kind: FAST_SAMPLES)",
    "tests/test_*.py::test_*_rounding_bound*[[]*": "float32 against the rounding bound, entry by entry",
    "tests/test_attention.py::test_float32_within_the_rounding_bound*": "float32 against the bound",
    "tests/test_conv.py::test_conv_is_within_the_rounding_bound_of_the_exact_values*": "the bound, entry by entry",
    "tests/test_conv.py::test_conv_under_jit_and_vmap": "traced again (layernorm's and attention's stay fast)",
    "tests/test_batchnorm.py::test_batchnorm_under_jit_and_vmap": "traced again",
    "tests/test_pool.py::test_*_under_jit_and_vmap": "traced again",
    "tests/test_layers.py::test_embedding_under_jit_and_vmap": "traced again",
    "tests/test_layers.py::test_residual_under_jit_and_vmap": "traced again",
    "tests/test_ops.py::test_derivative_wrong_only_where_saturated_is_caught[[]*-float32-0.99]": "the middle "
    "deviation in float32 (0 and 256 ulps stay fast, and 0.99 in float64)",
    "tests/test_batchnorm.py::test_batchnorm_matches_pytorch_training_mode*": "torch",
    "tests/test_verify.py::test_verify_writes_no_progress_frames_when_stderr_is_not_a_terminal": "verify end to end",
    "tests/test_verify.py::test_every_witness_program_is_right_on_a_deep_identity_softmax_net": "one "
    "more network through every witness program",
    # fast-tier budget: cases whose code path another fast test keeps exercised
    "tests/test_oracle_mutants.py::test_unmutated_implementation_passes_every_mutant_domain[[]*": "the "
    "deep mutants' domains (the fast mutants' squared-error and softmax domains stay)",
    "tests/test_protocol.py::test_a_broken_client_fails_with_a_clear_report[[]hang]": "a hang waits "
    "out its timeout (test_wire_ops' hanging client stays fast)",
    "tests/test_protocol.py::test_a_client_without_a_proper_hello_is_a_usage_error[[]hang_before_hello]":
    "a hang waits out its timeout",
    "tests/test_oracle_textbook.py::test_textbook_backprop_passes_saturated_units[[]*-float32]": "second dtype",
    "tests/test_attention.py::test_masked_softmax_is_robust[[]float32]": "second dtype",
    "tests/test_activations.py::test_nan_stays_nan_in_f_and_every_derivative_form[[]*-float32]": "second "
    "dtype (float64 keeps every activation)",
    # the kind x transport matrix: a subprocess per isolated or wire check, compiling bpref's answer
    "tests/test_matrix.py::test_every_op_kind_travels_every_transport_*": "the kind x transport "
    "matrix (test_wire_ops and the --op CLI tests keep each transport fast)",
    "tests/test_matrix.py::test_the_network_travels_every_python_transport*": "the kind x transport matrix",
    "tests/test_cluster.py::test_a_seed_gives_one_verdict_on_one_worker_two_workers_and_a_cluster*":
    "three searches, two of them in subprocesses (the fast tier compares the cluster with this process)",
    "tests/test_cluster.py::test_a_search_on_worker_processes_gives_the_same_verdict_*":
    "Dask worker processes",
    "tests/test_cluster.py::test_a_call_that_does_not_return_is_a_timeout_and_the_search_goes_on": "a hang "
    "waits out its timeout",
    "tests/test_testing.py::test_a_candidate_that_exits_fails_its_test_and_the_run_goes_on[[]isolated]":
    "a crash shrunk in a fresh process per attempt (the session worker's own test stays fast)",
    "tests/test_diagnosis_models.py::test_a_combined_convention_note_lists_only_the_activations_that_differ":
    "a bucket function over every activation, compiled for one note",
    # fast-tier budget, second round: what another fast test keeps exercised
    "tests/test_verify.py::test_witness_table_fails_a_wrong_gradient": "verify's witness programs "
    "compiled once more (the packing-bug test keeps a failing witness row fast)",
    "tests/test_testing.py::test_a_candidate_that_exits_fails_its_test_and_the_run_goes_on[[]in_process]":
    "a pytest run in a subprocess (the session worker's test and the CLI's exiting candidate stay fast)",
    "tests/test_oracle.py::test_no_verdict_on_the_command_line_exits_2_with_the_counts": "the command "
    "line's form of test_a_search_that_checks_no_network_is_no_pass, which stays fast",
    "tests/test_bridges.py::test_torch_autograd_gradients_match_bpref_in_torch_layout": "torch's bridge "
    "(the oracle's torch candidate stays fast)",
    "tests/test_bridges.py::test_torch_round_trip_is_exact_and_computes_the_same_function": "torch's "
    "bridge (the oracle's torch candidate stays fast)",
    "tests/test_diagnosis_models.py::test_correct_candidates_pass": "the mutant sources' right code "
    "(test_oracle_textbook keeps textbook code passing fast)",
    "tests/test_oracle.py::test_assert_backprop_correct": "the helper in a session worker importing "
    "this module (test_testing keeps the helper, its worker and its failure text fast)",
    "tests/test_ops_block.py::test_an_attention_bug_is_named_at_its_step": "a GPT-2 block search (the "
    "CNN composition keeps the block record's steps and first wrong step fast)",
    "bpref/layers/*.py::*": "the layer modules' docstring examples, run eagerly (each layer's "
    "backward is checked against jax.vjp in the fast tier)",
    # the CNN composition and the CS231n-style examples (bpref/oracle/ops/cnn.py, examples/cs231n)
    "tests/test_ops_cnn.py::test_right_cs231n_layers_pass_inside_the_cnn*": "full searches in both "
    "dtypes (the short search stays fast)",
    "tests/test_ops_cnn.py::test_a_bug_in_each_step_is_named_at_that_step[[]*": "a search per step "
    "(relu's and max pool's stay fast; each kind's bug is named fast in test_examples_cs231n)",
    "tests/test_ops_cnn.py::test_the_bpref_signature_is_the_default": "a second calling convention",
    "tests/test_ops_cnn.py::test_cnn_backward_matches_jax_vjp[[]uneven]": "a second geometry",
    "tests/test_ops_cnn.py::test_of_two_bugs_the_earlier_step_in_the_backward_pass_is_named[[]conv_and_pool]":
    "one more pair of steps",
    "tests/test_examples_cs231n.py::test_each_right_function_passes_its_kind[[]*": "the right "
    "functions pass inside the fast CNN search (dropout's and spatial batchnorm's stay fast)",
    "tests/test_examples_cs231n.py::test_the_naive_convolution_passes_other_strides_and_paddings*":
    "more geometries",
    "tests/test_examples_cs231n.py::test_the_readme_command_names_the_first_wrong_step": "a fresh "
    "interpreter through the CLI",
    "tests/test_examples_cs231n.py::test_each_planted_bug_is_named[[]relu]": "named fast inside the CNN",
    "tests/test_examples_cs231n.py::test_each_planted_bug_is_named[[]maxpool]": "named fast inside the CNN",
}
"""Deep tests, by node-id pattern, with why each is deep."""

FAST_SAMPLES = (
    "tests/test_outside_autodiff.py::test_mygrad_passes_or_its_defect_is_named[[]mg/layer/leaky_relu-float64]",
    "tests/test_outside_autodiff.py::test_mygrad_passes_or_its_defect_is_named[[]mg/maxpool2d/p2s2-float32]",
    "tests/test_outside_autodiff.py::test_the_defects_it_names_are_mygrads",
    "tests/test_oracle_hostile.py::test_in_process_calls_run_on_one_thread_*",
    "tests/test_oracle_hostile.py::test_a_call_that_hangs_keeps_its_thread_*",
    "tests/test_matrix.py::test_every_op_kind_travels_every_transport_and_*[[]dense-thread]",
    "tests/test_ops_cnn.py::test_a_bug_in_each_step_is_named_at_that_step[[]relu]",
    "tests/test_ops_cnn.py::test_a_bug_in_each_step_is_named_at_that_step[[]maxpool]",
    "tests/test_examples_cs231n.py::test_each_right_function_passes_its_kind[[]dropout-float64]",
    "tests/test_examples_cs231n.py::test_each_right_function_passes_its_kind[[]spatial_batchnorm-float64]",
    "tests/test_oracle_mutants.py::test_oracle_catches_and_names_mutant[[]transposed]",
    "tests/test_oracle_mutants.py::test_oracle_catches_and_names_mutant[[]hidden_fprime_missing]",
    "tests/test_oracle_mutants.py::test_oracle_catches_and_names_mutant[[]bias_first_example]",
    "tests/test_oracle_mutants.py::test_oracle_catches_and_names_mutant[[]mean_not_sum]",
    "tests/test_oracle_mutants.py::test_oracle_catches_and_names_mutant[[]tanh_missing_square]",
    "tests/test_oracle_mutants.py::test_oracle_catches_and_names_mutant[[]softmax_diagonal]",
    "tests/test_oracle.py::test_correct_independent_implementations_pass[[]row_major-float64]",
    "tests/test_oracle.py::test_correct_independent_implementations_pass[[]in_out-float32]",
    "tests/test_oracle.py::test_misbehaving_candidate_is_reported_plainly[[]raises-*",
    "tests/test_oracle.py::test_misbehaving_candidate_is_reported_plainly[[]returns_nan-*",
    "tests/test_oracle_mutants.py::test_unmutated_implementation_passes_every_mutant_domain[[]squared]",
    "tests/test_oracle_mutants.py::test_unmutated_implementation_passes_every_mutant_domain[[]softmax]",
    "tests/test_exec.py::test_reference_client_passes_and_its_planted_bug_is_diagnosed[[]c_client]",
    "tests/test_ops_attention.py::test_a_right_attention_passes[[]llmc_loops-llmc-float64]",
    "tests/test_ops_batchnorm.py::test_a_right_batchnorm_passes[[]staged-float64-nchw]",
    "tests/test_ops_conv.py::test_a_right_conv2d_passes[[]naive-s2p1-float64]",
    "tests/test_ops_embedding.py::test_a_right_embedding_passes[[]loops-float64]",
    "tests/test_ops_layernorm.py::test_a_right_layernorm_passes[[]llmc-float64]",
    "tests/test_ops_pool.py::test_a_right_maxpool_passes[[]naive_loops-p3s2-float64]",
    "tests/test_ops_pool.py::test_a_right_dropout_passes[[]cs231n_wrapped-p0.5-float64]",
    "tests/test_ops_residual.py::test_a_right_residual_passes[[]course-gelu_tanh-float64]",
)
"""Cases of deep tests that the fast tier keeps."""


SWEEP = {
    "tests/test_ops_*.py::test_a_right_*_at_every_seed*[[]custom_vjp-*-1]": "a jax.custom_vjp rule's "
    "second seed, compiled once per shape (the deep tier runs its seed 0)",
    "tests/test_ops_*.py::test_a_right_*_at_every_seed*[[]*-[234]]": "seeds 2 to 4 of every right "
    "candidate, window, geometry and layout (the deep tier runs seeds 0 and 1)",
    "tests/test_ops_*.py::test_a_*custom_vjp*[[]*float32*": "a jax.custom_vjp rule in float32 too, "
    "compiled once per shape",
    "tests/test_ops_*.py::test_a_right_*_passes*[[]custom_vjp-*float32*": "a jax.custom_vjp rule in "
    "float32 too, compiled once per shape",
    "tests/test_ops_*.py::test_each_classic_*_bug_fails_with_its_name[[]*-[1-9]]": "seeds 1 to 9 of "
    "every planted bug of the layer kinds, each named by its code (the fast and deep tiers run "
    "seed 0)",
}
"""The sweep tier: the layer kinds' right candidates and planted bugs at every further seed and a
framework rule's second dtype; ``--tier sweep`` (about 10 minutes on 2 cores) or ``--tier all``.
The figures of the issue notes come from such sweeps; CI runs the fast and deep tiers."""


def pytest_addoption(parser):
  parser.addoption("--tier", choices=("fast", "deep", "sweep", "all"), default="fast",
                   help="bpref's test tier: fast (the default, the README's command), deep (the "
                        "rest: more examples, fresh interpreters, exhaustive matrices), sweep "
                        "(the layer kinds at every further seed) or all")


def pytest_configure(config):
  config.addinivalue_line("markers", "deep: in the deep tier (conftest.DEEP); run with --tier deep")


def is_deep(nodeid: str) -> bool:
  return (any(fnmatch.fnmatchcase(nodeid, p) for p in DEEP)
          and not any(fnmatch.fnmatchcase(nodeid, p) for p in FAST_SAMPLES))


def pytest_collection_modifyitems(config, items):
  tier = config.getoption("--tier")
  if not config.args or config.args == list(config.getini("testpaths")):  # the whole suite
    ids = [item.nodeid for item in items]
    files = {i.split("::")[0] for i in ids}  # a module skipped whole (a missing extra) has none
    stale = [p for p in (*DEEP, *FAST_SAMPLES, *SWEEP) if p.split("::")[0] in files
             and not any(fnmatch.fnmatchcase(i, p) for i in ids)]
    if stale:
      raise pytest.UsageError(f"conftest.py: these tier patterns match no test: {', '.join(stale)}")
  keep, drop = [], []
  for item in items:
    sweep = any(fnmatch.fnmatchcase(item.nodeid, p) for p in SWEEP)
    deep = not sweep and (is_deep(item.nodeid) or item.get_closest_marker("deep") is not None)
    if deep:
      item.add_marker("deep")
    here = "sweep" if sweep else "deep" if deep else "fast"
    (keep if tier in ("all", here) else drop).append(item)
  if drop:
    config.hook.pytest_deselected(items=drop)
    items[:] = keep


# The bridges' modules import their framework at the top: without the `bridges` extra the
# doctest collection leaves them out (their tests skip on their own).
collect_ignore = [f"bpref/bridges/{name}.py" for name, module in
                  (("torch", "torch"), ("equinox", "equinox"), ("flax", "flax"))
                  if importlib.util.find_spec(module) is None]
