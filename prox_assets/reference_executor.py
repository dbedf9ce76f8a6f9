"""The ProX reference's chunk-program executor, reproduced for the executor benchmark.

A port of ``execute_operations``, ``merge_intervals`` and ``execute_meta_operations`` from
``utils/chunk_utils.py`` of https://github.com/GAIR-NLP/ProX (commit b3fcbb20, Apache License
2.0), kept step for step: the same string splitting of each statement, the same per-line copies,
sets and lists, the same normalize-then-remove order and the same full word counts, so that its
time is the reference's time. Only the bare ``except:`` clauses read ``except Exception:``, and
the results nobody reads (normalization pairs, noise lines, merged intervals) are still built.

It is the baseline, not a model: the project's executor (``prox_assets.core.executor``) parses
programs as a language and differs wherever this code misreads one (see tests/core/test_programs.py).
"""

# A port kept step for step: its broad excepts, unused results and branches stay as written.
# ruff: noqa: BLE001, RUF059, SIM114

from __future__ import annotations


def split_doc(text):
    lines = text.split("\n")
    processed_lines = []
    for line in lines:
        processed_line = line[:]
        processed_lines.append(processed_line)
    return processed_lines


def execute_operations(text, operations):
    lines = split_doc(text)
    lines_to_remove = set()
    normalization_pairs = []
    intervals = []
    num_error_op = 0
    for operation in operations:
        if operation.startswith("remove_lines") and "all=True" not in operation:
            try:
                start_idx = operation.index("(") + 1
            except Exception:
                num_error_op += 1
                continue
            try:
                end_idx = operation.index(")")
            except Exception:
                num_error_op += 1
                end_idx = -1
            params = operation[start_idx:end_idx].split(",")
            try:
                start = int(params[0].split("=")[1])
                end = int(params[1].split("=")[1])
            except Exception:
                num_error_op += 1
                continue
            intervals.append((start, end))
            for line_num in range(start, end + 1):
                lines_to_remove.add(line_num)
        elif operation.startswith("normalize"):
            try:
                start_idx = operation.index("(") + 1
            except Exception:
                num_error_op += 1
                continue
            try:
                end_idx = operation.index(")")
            except Exception:
                num_error_op += 1
                end_idx = -1
            params = operation[start_idx:end_idx]
            params = params.split(",")
            if len(params) == 1:
                try:
                    source_str = params[0].split("=")[1].strip('"')
                    text = text.replace(source_str, "")
                    normalization_pairs.append((source_str, ""))
                except Exception:
                    num_error_op += 1
                    continue
            elif len(params) == 2:
                try:
                    source_str = params[0].split("=")[1].strip('"')
                    target_str = params[1].split("=")[1].strip('"')
                except Exception:
                    num_error_op += 1
                    continue
                if source_str != " " and source_str != "":
                    text = text.replace(source_str, target_str)
                normalization_pairs.append((source_str, target_str))
        elif operation.startswith("remove_lines") and "all=True" in operation:
            lines_to_remove = set(range(len(lines)))
    # Remove the specified lines after normalization
    lines = split_doc(text)
    processed_lines = [line for i, line in enumerate(lines) if i not in lines_to_remove]
    noise_lines = [line for i, line in enumerate(lines) if i in lines_to_remove]
    intervals = merge_intervals(intervals)
    remove_operations = []
    for interval in intervals:
        if interval[0] >= len(lines):
            num_error_op += 1
            continue
        elif interval[1] >= len(lines):
            num_error_op += 1
            interval = [interval[0], len(lines) - 1]
        remove_operations.append([interval[0], interval[1]])
    return (
        "\n".join(processed_lines),
        normalization_pairs,
        noise_lines,
        remove_operations,
        num_error_op,
    )


def merge_intervals(intervals):
    if not intervals:
        return []
    intervals.sort(key=lambda x: x[0])
    merged = [intervals[0]]
    for current in intervals[1:]:
        previous = merged[-1]
        if current[0] <= previous[1] + 1:
            merged[-1] = (previous[0], max(previous[1], current[1]))
        else:
            merged.append(current)
    return merged


def execute_meta_operations(text, operations, threshold_1=0.0, threshold_2=0.95, error_op=2):
    """The refined text, or "" for a dropped document (raises on a text without words, as the
    reference does)."""
    program = operations.strip(" ").split("\n")
    processed_text, normalization_pairs, noise_lines, remove_operations, num_error_op = (
        execute_operations(text, program)
    )
    len_processed_text = len(processed_text.split())
    len_text = len(text.split())
    if len_processed_text / len_text * 1.0 <= (1 - threshold_2) and num_error_op < error_op:
        return ""
    elif len_processed_text <= 10:  # ad-hoc rule integrated from FineWeb
        return ""
    elif len_processed_text / len_text * 1.0 >= threshold_1 and num_error_op < error_op:
        return processed_text
    else:
        return text
