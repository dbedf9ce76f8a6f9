-- label, n: the accepted examples of SFT set $level / $sft_version by label
SELECT label, count(*) AS n
FROM sft_examples
WHERE status = 'accepted' AND level = $level AND sft_version = $sft_version
GROUP BY 1
