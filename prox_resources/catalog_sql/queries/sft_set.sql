-- level, sft_version, n_train, n_val, n_rejected of SFT set $level / $sft_version
SELECT level, sft_version, n_train, n_val, n_rejected
FROM sft_sets WHERE level = $level AND sft_version = $sft_version
