-- config (JSON): how SFT set $level / $sft_version was built
SELECT config FROM sft_sets WHERE level = $level AND sft_version = $sft_version
