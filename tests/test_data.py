"""Prompt data on real rows from ../shared/data: loading, templates, filtering, clear errors."""

import json

import pytest
from transformers import AutoTokenizer

from oat_cpgd.data import DataError, build_prompts, load_split


@pytest.fixture(scope="module")
def tokenizer(tiny_model_path):
    return AutoTokenizer.from_pretrained(tiny_model_path)


def test_gsm8k_folder_splits_by_file_stem(shared_data, tokenizer):
    train = load_split(str(shared_data / "gsm8k"), "train")
    test = load_split(str(shared_data / "gsm8k"), "test")
    assert len(train) == 7473 and len(test) == 1319
    prompts = build_prompts(
        test, tokenizer, input_key="question", output_key="final_answer", prompt_max_length=4096, max_items=50
    )
    assert len(prompts) == 50 and prompts.references[0] == "18"
    assert prompts.prompts[0].startswith("Janet")
    assert prompts.indices == list(range(50))


def test_slices_and_missing_split(shared_data):
    assert len(load_split(str(shared_data / "gsm8k"), "test[:10]")) == 10
    with pytest.raises(DataError, match=r"splits: \['test', 'train'\]"):
        load_split(str(shared_data / "gsm8k"), "validation")


def test_single_file_is_split_train(shared_data):
    rows = load_split(str(shared_data / "math500" / "test.jsonl"), "train[:5]")
    assert len(rows) == 5 and "problem" in rows.column_names


def test_saved_to_disk_folder(tmp_path, shared_data):
    import datasets

    rows = load_split(str(shared_data / "math500"), "test").select(range(20))
    datasets.DatasetDict({"test": rows}).save_to_disk(str(tmp_path / "saved"))
    assert len(load_split(str(tmp_path / "saved"), "test")) == 20
    assert len(load_split(str(tmp_path / "saved"), "test[5:15]")) == 10


def test_countdown_template_and_dict_reference(shared_data, tokenizer):
    rows = load_split(str(shared_data / "countdown" / "train_head.jsonl"), "train[:8]")
    prompts = build_prompts(
        rows, tokenizer, input_key="nums", output_key="target,nums", prompt_template="countdown", prompt_max_length=1024
    )
    assert "Using the numbers [44, 19, 35], create an equation that equals 98" in prompts.prompts[0]
    assert prompts.prompts[0].endswith("<think>")
    assert prompts.references[0] == {"target": 98, "nums": [44, 19, 35]}


def test_boxed_template_and_chat_template(shared_data, tokenizer):
    rows = load_split(str(shared_data / "math500"), "test[:3]")
    boxed = build_prompts(
        rows, tokenizer, input_key="problem", output_key="answer", prompt_template="boxed", prompt_max_length=4096
    )
    assert boxed.prompts[0].endswith("put your final answer within \\boxed{}.")
    chat = build_prompts(
        rows,
        tokenizer,
        input_key="problem",
        output_key="answer",
        prompt_template="boxed",
        apply_chat_template=True,
        prompt_max_length=4096,
    )
    assert chat.prompts[0].startswith("<|im_start|>user\n") and chat.prompts[0].endswith("<|im_start|>assistant\n")
    assert chat.prompt_ids[0] == tokenizer(chat.prompts[0], add_special_tokens=False)["input_ids"]


def test_python_tool_template_shows_a_call_the_environment_runs(shared_data, tokenizer):
    from oat_cpgd.environments.python_tool import PythonTool, tool_call

    rows = load_split(str(shared_data / "gsm8k"), "test[:3]")
    prompts = build_prompts(
        rows,
        tokenizer,
        input_key="question",
        output_key="final_answer",
        prompt_template="python_tool",
        apply_chat_template=True,
        prompt_max_length=4096,
    )
    prompt = prompts.prompts[0]
    assert prompt.startswith("<|im_start|>user\nJanet") and prompt.endswith("<|im_start|>assistant\n")
    # The example turn, up to the end of its block: the environment runs its code, and its stop string ends it.
    start = prompt.index("```python\n")
    example = prompt[start : prompt.index("\n```\n", start) + len("\n```\n")]
    assert tool_call(example) == "print(2 + 3)" and example.endswith(PythonTool.stop)
    assert "```output" in prompt and "within \\boxed{}." in prompt  # what comes back; how --oracle reads answers


def test_long_prompts_are_dropped_and_counted(shared_data, tokenizer):
    rows = load_split(str(shared_data / "math500"), "test[:100]")
    lengths = [len(tokenizer(r["problem"])["input_ids"]) for r in rows]
    limit = sorted(lengths)[50]
    prompts = build_prompts(rows, tokenizer, input_key="problem", output_key="answer", prompt_max_length=limit)
    assert prompts.num_dropped == sum(n > limit for n in lengths) > 0
    assert len(prompts) + prompts.num_dropped == 100
    assert all(len(ids) <= limit for ids in prompts.prompt_ids)  # dropped, never truncated
    assert all(rows[i]["problem"] == p for i, p in zip(prompts.indices, prompts.prompts, strict=False))


def test_missing_column_lists_the_columns(shared_data, tokenizer):
    rows = load_split(str(shared_data / "gsm8k"), "test[:3]")
    with pytest.raises(
        DataError, match=r"--input_key names column 'problem'.*\['question', 'answer', 'final_answer'\]"
    ):
        build_prompts(rows, tokenizer, input_key="problem", output_key="answer")
    with pytest.raises(DataError, match="--output_key names column 'gt_answer'"):
        build_prompts(rows, tokenizer, input_key="question", output_key="gt_answer")
    with pytest.raises(DataError, match="column 'nums'"):
        build_prompts(rows, tokenizer, input_key="question", output_key="answer", prompt_template="countdown")


def test_empty_after_filtering_is_an_error(shared_data, tokenizer, tmp_path):
    rows = load_split(str(shared_data / "gsm8k"), "test[:3]")
    with pytest.raises(DataError, match="all 3 rows exceed --prompt_max_length 2"):
        build_prompts(rows, tokenizer, input_key="question", output_key="answer", prompt_max_length=2)
    one_row = tmp_path / "one_row.jsonl"
    one_row.write_text(json.dumps({"question": "q", "answer": "1"}) + "\n")
    rows = load_split(str(one_row), "train")
    assert len(build_prompts(rows, tokenizer, input_key="question", output_key="answer")) == 1
    # No rows at all (the columns exist): nothing was dropped, the data is empty.
    empty = rows.select([])
    with pytest.raises(DataError, match="the data set is empty"):
        build_prompts(empty, tokenizer, input_key="question", output_key="answer")
    with pytest.raises(DataError, match="does not exist"):
        load_split(str(tmp_path / "nope.jsonl"), "train")
