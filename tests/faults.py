"""The fault suite: every test that injects a fault, what it injects and what must hold.

``FAULTS`` maps a test (``file::name``; parametrised cases count together) to ``(area, fault injected, what holds)``.
With ``RELIABILITY_REPORT=path.json`` set, the test run writes each listed test's outcome there (see
``tests/conftest.py``), and ``python scripts/reliability_table.py path.json docs/reliability.md`` turns it into the
table of ``docs/reliability.md``.
"""

from __future__ import annotations

FAULTS: dict[str, tuple[str, str, str]] = {
    # ---- runs: kills, signals, damaged or unwritable checkpoints, divergence
    "tests/audio/test_pretrain_cli.py::test_sigkill_midway_then_rerun_gives_identical_weights": (
        "runs", "SIGKILL of `aiaudio pretrain` once its step-12 checkpoint exists (of 24 steps), then the same command",
        "the rerun resumes and ends with bit-identical weights to an uninterrupted run"),
    "tests/core/test_toy_modality.py::test_a_killed_run_resumes_to_the_weights_and_queues_of_an_uninterrupted_one": (
        "runs", "a crash while reading the batch of step 6 of 8 (SimCLR, MoCo-v2, MoCo-v3)",
        "the rerun resumes from step 4 to bit-identical weights, momentum encoders and queues"),
    "tests/core/test_toy_modality.py::test_sigterm_saves_a_checkpoint_and_the_rerun_ends_where_an_uninterrupted_run_does": (
        "runs", "SIGTERM (preemption) while step 3 of 8 reads its batch",
        "a checkpoint of step 3 is saved, the run stops (exit 4), the rerun ends bit-identical"),
    "tests/core/test_toy_modality.py::test_a_damaged_latest_checkpoint_is_passed_over_for_the_previous_intact_one": (
        "runs", "a flipped bit in, or truncation of, the latest model.safetensors",
        "resume and load fall back, with a warning, to the previous intact checkpoint; the damaged one named directly is refused"),
    "tests/core/test_toy_modality.py::test_a_full_disk_while_saving_says_so_and_keeps_the_previous_checkpoint": (
        "runs", "the disk fills while state.pt is written", "the partial checkpoint is removed; the error says the disk is full and names the intact previous one"),
    "tests/core/test_toy_modality.py::test_a_run_directory_in_use_is_refused_and_a_dead_holders_lock_taken_over": (
        "runs", "a second run in a run directory in use; a lock of a dead process; a lock of another host",
        "the live lock is refused naming PID and host; a dead process's lock is taken over; another host's is refused"),
    "tests/core/test_toy_modality.py::test_an_unwritable_run_directory_is_refused_before_training": (
        "runs", "a run directory that cannot be created", "refused before training, naming the folder"),
    "tests/core/test_toy_modality.py::test_resuming_with_more_steps_says_what_the_schedule_does": (
        "runs", "resuming with trainer.steps changed", "a warning says the schedule is recomputed over the new total"),
    "tests/audio/test_pretrain_cli.py::test_resume_refuses_a_changed_config": (
        "runs", "resuming with a computation-changing key changed", "refused, naming each changed key"),
    "tests/core/test_trainer.py::test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint": (
        "runs", "a NaN loss from step 9", "stops naming the step; the last good checkpoint is kept and finite"),
    "tests/core/test_trainer.py::test_a_non_finite_buffer_stops_the_run_before_any_checkpoint_holds_it": (
        "runs", "an infinite BatchNorm-like running statistic with a finite loss",
        "stops before the next checkpoint, naming the tensor; no non-finite checkpoint is written"),
    "tests/core/test_trainer.py::test_a_collapse_is_reported_with_its_step": (
        "runs", "embeddings constant across the batch", "a warning names the step of the collapse"),
    "tests/core/test_trainer.py::test_batches_that_leave_a_rank_fewer_than_two_examples_are_refused": (
        "runs", "a global batch of 2 on 2 ranks; a module that is not a TrainingModule", "refused at start"),
    "tests/core/test_toy_modality.py::test_moco_v2_queues_on_two_gloo_ranks_hold_only_their_descriptors_keys": (
        "runs", "two gloo ranks of MoCo-v2", "identical queues and weights on both ranks; keys only in their descriptor's queue"),
    # ---- configs
    "tests/audio/test_pretrain_cli.py::test_bad_values_are_refused_at_start_naming_the_key": (
        "configs", "min_active=9, a 10 ms crop, lr=-1, keep_checkpoints=0, batch_size=1, width=0, temperature=0, cuda without CUDA",
        "each refused at start, exit 2, no traceback, naming the key and the allowed range"),
    "tests/core/test_engine_parts.py::test_trainer_config_refuses_bad_values_naming_the_key": (
        "configs", "14 bad trainer values (keep_checkpoints 0/-1, batch_size 1, lr 0/-1, weight_decay -1, ...)",
        "each refused, naming the key"),
    "tests/audio/test_pretrain_cli.py::test_missing_cache_and_bad_keys_are_clear_errors": (
        "configs", "no cache built; an unknown key", "exit 2 with a message naming the cache or the key"),
    "tests/vision/test_vision_pipeline.py::test_bad_input_is_refused_before_work": (
        "configs", "images: a space with one descriptor, an unknown space, no data.root, a missing init file, a missing run",
        "each refused before work (exit 2), naming the key or file"),
    # ---- data: audio
    "tests/audio/test_split_file_safety.py::test_a_split_file_that_pickles_a_command_is_refused_and_nothing_runs": (
        "data", "a MetaAudio split file whose pickled element runs a command", "refused naming the file; the command never runs"),
    "tests/audio/test_cache_reliability.py::test_a_fifo_in_the_data_is_reported_as_unreadable_and_the_build_completes": (
        "data", "a FIFO listed as a clip (in process and with 2 workers)", "named as unreadable; the cache build completes"),
    "tests/audio/test_cache_reliability.py::test_a_worker_that_dies_is_named_and_the_build_goes_on": (
        "data", "a decoding worker killed by SIGKILL on one file", "the file is named; the build goes on"),
    "tests/audio/test_cache_reliability.py::test_a_file_whose_read_hangs_times_out_and_is_named": (
        "data", "a decoder that never returns", "timed out after data.file_timeout and named"),
    "tests/audio/test_cache_reliability.py::test_a_changed_file_makes_the_next_build_decode_again": (
        "data", "a clip replaced by silence under the same name", "the next build decodes it again: no stale features"),
    "tests/audio/test_cache_reliability.py::test_a_repaired_file_is_decoded_on_the_next_build": (
        "data", "an unreadable file repaired; a missing file added", "decoded on the next build"),
    "tests/audio/test_cache_reliability.py::test_a_cache_without_file_records_is_rebuilt": (
        "data", "a cache from before file records existed", "rebuilt once"),
    "tests/audio/test_cache.py::test_interrupted_build_never_looks_like_a_cache": (
        "data", "a cache build killed midway", "no partial build is ever taken for a cache"),
    "tests/audio/test_data_hygiene.py::test_folder_scan_names_dangling_links_loops_and_wav_folders": (
        "data", "a dangling link, a link loop and a folder named .wav in a folder data set", "each named and counted"),
    "tests/audio/test_data_hygiene.py::test_fsd50k_layout_names_dangling_links_loops_and_wav_folders": (
        "data", "the same in the FSD50K layout", "each named and counted"),
    "tests/audio/test_data_hygiene.py::test_csv_paths_outside_the_data_folder_are_refused_unopened": (
        "data", "CSV paths ../x and /elsewhere; a link inside the folder", "outside paths refused unopened; the link followed"),
    "tests/audio/test_data_hygiene.py::test_an_fsd50k_fname_that_leads_outside_is_refused": (
        "data", "an FSD50K fname of ../../outside", "refused"),
    "tests/audio/test_data_hygiene.py::test_truncated_silent_single_sample_and_clipped_clips_are_named_and_counted": (
        "data", "a WAV truncated after its header, an all-zero, a 1-sample and a clipped clip", "kept, named and counted as suspicious"),
    "tests/audio/test_data_hygiene.py::test_all_silent_or_all_unreadable_corpus_stops_at_the_cache_step": (
        "data", "a corpus of silent clips; a corpus of unreadable files", "the cache step stops saying what to fix"),
    "tests/audio/test_data_hygiene.py::test_partial_builds_of_other_hosts_and_live_processes_are_kept": (
        "data", "partial cache builds of another host and of a live process", "never deleted"),
    "tests/audio/test_data_hygiene.py::test_a_live_build_lock_is_refused_naming_host_and_pid": (
        "data", "a second cache build while one runs", "refused naming host and PID"),
    "tests/audio/test_cache.py::test_rebuild_is_idempotent_and_overwrite_is_explicit": (
        "data", "a cache of other entries at the target folder", "refused unless overwrite is explicit"),
    "tests/audio/test_cache.py::test_build_refuses_bad_targets_and_duplicate_keys": (
        "data", "a cache folder holding other files; duplicate keys", "refused"),
    "tests/audio/test_cache.py::test_opening_a_folder_that_is_not_a_cache_names_the_problem": (
        "data", "opening a folder that is not a cache", "the problem named"),
    "tests/audio/test_pretrain_cli.py::test_cache_reports_bad_metadata_as_an_error_naming_the_file": (
        "data", "malformed FSD50K metadata", "exit 2 naming the file"),
    "tests/audio/test_metaaudio.py::test_esc50_reader_errors_name_the_file": (
        "data", "missing and malformed ESC-50 metadata", "errors name the file"),
    "tests/audio/test_embed_reliability.py::test_a_bad_invariance_stops_before_any_decoding": (
        "data", "`embed` with an invariance missing factors", "refused before any audio is decoded"),
    "tests/audio/test_embed_reliability.py::test_a_file_added_to_the_folder_is_embedded_on_the_next_run": (
        "data", "a clip added to an embedded folder", "embedded on the next run (no stale cache, no overwrite needed)"),
    "tests/audio/test_encoder_records.py::test_a_checkpoint_without_a_record_still_loads_to_the_same_features": (
        "data", "a checkpoint written before encoder records (and checksums)", "loads to the same features"),
    # ---- data: images
    "tests/vision/test_vision_pipeline.py::test_readers_name_the_bad_file": (
        "images", "no images, a loose image, an undecodable image, CSV paths outside or empty cells",
        "each named; in training the next readable image stands in"),
    "tests/vision/test_official_readers.py::test_cifar_pickle_asking_for_code_is_refused_and_never_run": (
        "images", "a CIFAR pickle whose payload runs code", "refused naming the file; the payload never runs"),
    "tests/vision/test_official_readers.py::test_cifar10_missing_and_malformed_files_name_the_file": (
        "images", "missing and malformed CIFAR-10 files", "errors name the file"),
    "tests/vision/test_official_readers.py::test_flowers102_bad_files_name_the_file": (
        "images", "bad Flowers102 metadata", "errors name the file"),
    "tests/vision/test_official_readers.py::test_dtd_bad_files_name_the_file": ("images", "bad DTD split files", "errors name the file"),
    "tests/vision/test_official_readers.py::test_pets_bad_files_name_the_file": ("images", "bad Pets annotations", "errors name the file"),
    "tests/vision/test_official_readers.py::test_cub200_bad_files_name_the_file": ("images", "bad CUB-200 metadata", "errors name the file"),
    "tests/vision/test_official_readers.py::test_lsp_bad_files_name_the_file": ("images", "bad LSP joints", "errors name the file"),
    "tests/vision/test_official_readers.py::test_celeba_bad_files_name_the_file": ("images", "bad CelebA lists", "errors name the file"),
}
