"""Labelled inputs: tables, FASTA + labels, mutations, token alignment, and one clear error per problem."""

from pathlib import Path

import pytest

from foundry.errors import DataError
from foundry.finetune.data import batches, encode_records, read_records
from foundry.finetune.tasks import IGNORE, get_task
from foundry.plugins import get_manager
from modalities.protein.alphabet import EsmTokenizer

DATA = Path(__file__).parent / "data" / "finetune"
TOK = EsmTokenizer()


def fasta_readers():
    return get_manager().reader_objects(("fasta",))


def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_residue_labels_align_to_tokens_with_cls_and_eos_ignored():
    task = get_task("residue-classification")
    records = read_records(DATA / "ss3_valid.csv")
    info = task.fit([r.label for r in records], [r.where for r in records])
    assert info.names == ["C", "E", "H"]
    ex = encode_records(records[:3], TOK, task, info, max_len=1024)
    for e, r in zip(ex, records):
        assert len(e.tokens) == len(r.sequence) + 2 and e.tokens[0] == TOK.bos_id and e.tokens[-1] == TOK.eos_id
        assert e.target[0] == IGNORE and e.target[-1] == IGNORE
        for i, c in enumerate(r.label):  # residue i sits at token i + 1
            assert e.target[i + 1] == (IGNORE if c == "." else info.names.index(c))


def test_long_sequences_keep_their_labels_and_train_in_windows_of_max_len():
    task = get_task("residue-classification")
    records = read_records(DATA / "ss3_valid.csv")[:2]
    info = task.fit([r.label for r in records], [r.where for r in records])
    ex = encode_records(records, TOK, task, info, max_len=20)
    assert [len(e.tokens) for e in ex] == [len(r.sequence) + 2 for r in records]
    assert all(len(e.target) == len(e.tokens) for e in ex)
    batch = batches(ex, 2, TOK.pad_id, "residue", seed=0)[0]  # training: each example's window of 20 tokens
    assert batch.tokens.shape == batch.targets.shape == (2, 20)
    assert (batch.tokens[:, 0] == TOK.bos_id).all() and (batch.tokens[:, -1] == TOK.eos_id).all()
    scored = batches(ex, 2, TOK.pad_id, "residue")[0]  # evaluation order: whole examples
    assert scored.tokens.shape[1] == max(len(e.tokens) for e in ex)


def test_fasta_plus_labels_in_record_order():
    records = read_records(DATA / "amp_train.fasta", readers=fasta_readers(), labels_path=DATA / "amp_train_labels.txt")
    assert len(records) == 160 and {r.label for r in records} == {"amp", "other"}
    assert records[0].id == "Seq_1303" or records[0].id.startswith("Seq_")


def test_fasta_plus_labels_by_id(tmp_path):
    seqs = write(tmp_path, "s.fasta", ">a\nMKV\n>b\nMKL\n")
    labels = write(tmp_path, "l.csv", "id,label\nb,1.5\na,0.5\n")
    records = read_records(seqs, readers=fasta_readers(), labels_path=labels)
    assert [(r.id, r.label) for r in records] == [("a", "0.5"), ("b", "1.5")]
    flip_style = write(tmp_path, "l.fasta", ">a SET=train\nHHE\n>b SET=test\nCCE\n")
    records = read_records(seqs, readers=fasta_readers(), labels_path=flip_style)
    assert [r.label for r in records] == ["HHE", "CCE"]
    missing = write(tmp_path, "m.csv", "id,label\na,1\n")
    with pytest.raises(DataError, match=r"s\.fasta: record 2 'b': no label for this id in .*m\.csv"):
        read_records(seqs, readers=fasta_readers(), labels_path=missing)


def variants(path, wildtype, wildtype_start=1):
    """The records of a mutation table, as `finetune --task variant-effect` reads them."""
    from foundry.finetune.data import Columns

    task = get_task("variant-effect")
    task.configure({"wildtype": wildtype, "wildtype_start": wildtype_start})
    return task.read_split(path, None, Columns(), ())


def test_mutations_apply_with_offset_and_mismatch_names_row_position_letter(tmp_path):
    wt = (DATA / "pab1_wt.fasta").read_text().split("\n")[1]
    first = write(tmp_path, "o.csv", "mutation,label\nG126A,0.1\nWT,0.0\n")
    records = variants(first, wt, 126)
    assert records[0].sequence[0] == "A" and records[0].sequence[1:] == wt[1:] and records[1].sequence == wt
    table = write(tmp_path, "v.csv", "mutation,label\nK2R:A4G,0.1\nA3G:T50S,0.2\n")
    with pytest.raises(DataError, match=r"v\.csv: line 3: mutation A3G: position 3 expects wild-type A but the sequence "
                                        r"has T there \(--wildtype-start 1; is it right\?\)"):
        variants(table, "MKTAYIAK")
    assert variants(write(tmp_path, "d.csv", "mutation,label\nK2R:A4G,0.1\n"), "MKTAYIAK")[0].sequence == "MRTGYIAK"
    far = write(tmp_path, "f.csv", "mutation,label\nK20R,0.1\n")
    with pytest.raises(DataError, match=r"line 2: mutation K20R: position 20 is outside the wild-type sequence \(positions 1..8"):
        variants(far, "MKTAYIAK")


@pytest.mark.parametrize("mutations, message", [
    ("K2R K3T", None),  # space-separated, as score-variants reads it
    ("K2R+K3T", None),
    ("K2R:K2T", "position 2 is mutated twice"),  # used to apply both, silently keeping the last
    ("K2*", "stop codons"),  # used to say 'not of the form A24G'
    ("K2J", "'J' is not an amino-acid letter"),  # used to tokenize as an error much later, or not at all
    ("", "empty mutation"),
])
def test_variant_effect_reads_mutations_with_the_score_variants_parser(tmp_path, mutations, message):
    table = write(tmp_path, "v.csv", f"mutation,label\nK2R,0.1\n\"{mutations}\",0.2\n")
    if message is None:
        assert variants(table, "MKKAYIAK")[1].sequence == "MRTAYIAK"
        return
    with pytest.raises(DataError, match=message) as err:
        variants(table, "MKKAYIAK")
    assert str(err.value).startswith(f"{table}: line 3: ")


def test_a_mistyped_wildtype_file_is_an_error_not_a_sequence(tmp_path):
    table = write(tmp_path, "v.csv", "mutation,label\nWT,0.1\n")
    with pytest.raises(DataError, match=r"--wildtype wt\.fasta: no such file, and not a protein sequence \('\.' at position 3"):
        variants(table, "wt.fasta")  # used to become the sequence WT.FASTA ('.' is a gap token)
    fasta = write(tmp_path, "wt.fasta", ">wt\nmktay\n")
    assert variants(table, str(fasta))[0].sequence == "MKTAY"


def test_bad_letters_label_length_missing_column_empty_split_each_name_file_and_row(tmp_path):
    task = get_task("residue-classification")
    bad_letter = write(tmp_path, "bad.csv", "id,sequence,label\np1,MKV,CCH\np2,MKJV,CCHH\n")
    records = read_records(bad_letter)
    info = task.fit([r.label for r in records], [r.where for r in records])
    with pytest.raises(DataError, match=r"bad\.csv: line 3 \(id 'p2'\): .*'J' at position 3 is not in the ESM protein alphabet"):
        encode_records(records, TOK, task, info, 1024)

    short = write(tmp_path, "short.csv", "id,sequence,label\np1,MKV,CCH\np2,MKVL,CCH\n")
    records = read_records(short)
    with pytest.raises(DataError, match=r"short\.csv: line 3 \(id 'p2'\): the label string has 3 characters but the sequence has 4 residues"):
        encode_records(records, TOK, task, info, 1024)

    no_col = write(tmp_path, "nocol.csv", "id,sequence,target\np1,MKV,1\n")
    with pytest.raises(DataError, match=r"nocol\.csv: no label column 'label'; the columns are: id, sequence, target"):
        read_records(no_col)

    empty = write(tmp_path, "empty.csv", "id,sequence,label\n")
    with pytest.raises(DataError, match=r"empty\.csv: no rows \(an empty split\)"):
        read_records(empty)


def test_labels_that_are_not_numbers_or_unseen_classes(tmp_path):
    reg = get_task("sequence-regression")
    table = write(tmp_path, "r.csv", "sequence,label\nMKV,1.0\nMKL,high\n")
    records = read_records(table)
    with pytest.raises(DataError, match=r"r\.csv: line 3: label 'high' is not a number"):
        reg.fit([r.label for r in records], [r.where for r in records])
    cls = get_task("sequence-classification")
    info = cls.fit(["a", "b"], ["x", "y"])
    with pytest.raises(DataError, match=r"v\.csv: line 7: label 'c' does not occur in the training split \(classes: a, b\)"):
        cls.encode("c", 3, "v.csv: line 7", info)


def test_multi_label_classes_are_multi_hot():
    cls = get_task("sequence-classification")
    info = cls.fit(["membrane;secreted", "cytoplasm", "secreted"], ["1", "2", "3"])
    assert info.multi_label and info.names == ["cytoplasm", "membrane", "secreted"]
    assert cls.encode("secreted;membrane", 5, "w", info).tolist() == [0.0, 1.0, 1.0]


def test_task_registry_lists_known_names_and_unregisters():
    from foundry.errors import FoundryError
    from foundry.finetune.tasks import Task
    from foundry.hookspecs import hookimpl
    from foundry.plugins import get_manager
    from foundry.testing import plugins_registered

    with pytest.raises(FoundryError, match="Did you mean 'sequence-regression'"):
        get_task("sequence-regresion")

    class Stability(Task):
        name, level, regression = "stability-test", "sequence", True

    class StabilityPlugin:
        @hookimpl
        def register_tasks(register):
            register(Stability)

    class Clash:
        @hookimpl
        def register_tasks(register):
            register("sequence-regression", Stability)

    with plugins_registered(("stability", StabilityPlugin)) as manager:
        assert isinstance(get_task("stability-test"), Stability)
        manager.register_plugin(Clash, "clash")
        assert "registered twice" in manager.failures[-1].error and "clash" not in manager.plugins
        assert get_manager().task_class("sequence-regression").__name__ == "SequenceRegression"
    assert "stability-test" not in get_manager().tasks


# -- labels that would silently change the task ----------------------------------------------------


def _ss3_with(tmp_path, row: int, position: int, char: str):
    """The SS3 training split with one label character replaced (row: 0-based data row)."""
    lines = (DATA / "ss3_train.csv").read_text().splitlines()
    rid, seq, label = lines[row + 1].split(",")
    lines[row + 1] = ",".join([rid, seq, label[: position - 1] + char + label[position:]])
    return write(tmp_path, "ss3_train.csv", "\n".join(lines) + "\n"), rid


def _fit(task, path):
    records = read_records(path)
    return task.fit([r.label for r in records], [r.where for r in records])


def test_one_typo_in_ss3_training_labels_is_named_with_its_row_not_a_4th_class(tmp_path):
    task = get_task("residue-classification")
    assert _fit(task, DATA / "ss3_train.csv").names == ["C", "E", "H"]
    typo, rid = _ss3_with(tmp_path, 6, 12, "X")
    with pytest.raises(DataError, match=rf"ss3_train\.csv: line 8 \(id '{rid}'\): label 'X' at position 12 occurs once among "
                                        r"\d+ labelled residues of the training split \(other states: C \d+, E \d+, H \d+\); a typo\?"):
        _fit(task, typo)  # used to make 4 classes, and Q3 vanished from the report
    lower, rid = _ss3_with(tmp_path, 3, 5, "h")
    with pytest.raises(DataError, match=rf"line 5 \(id '{rid}'\): label 'h' at position 5 differs from the state 'H' only by case"):
        _fit(task, lower)


def test_declared_states_accept_a_rare_one_and_refuse_others(tmp_path):
    task = get_task("residue-classification")
    rare, _ = _ss3_with(tmp_path, 6, 12, "G")  # a real but rare state (3-10 helix), declared by the user
    task.declare_classes("HGEC")
    assert _fit(task, rare).names == ["H", "G", "E", "C"]
    task.declare_classes("H,E,C")
    with pytest.raises(DataError, match=r"line 8 \(id '.*'\): label 'G' at position 12 is not one of the declared states \(HEC; '\.' = no label\)"):
        _fit(task, rare)
    from foundry.errors import FoundryError

    with pytest.raises(FoundryError, match="single characters"):
        task.declare_classes("helix,strand")
    with pytest.raises(FoundryError, match="applies to classification tasks only"):
        get_task("sequence-regression").declare_classes("a,b")


def test_unseen_state_in_valid_names_file_row_and_position(tmp_path):
    task = get_task("residue-classification")
    info = _fit(task, DATA / "ss3_train.csv")
    valid = write(tmp_path, "v.csv", "id,sequence,label\np1,MKV,CCH\np2,MKVL,CCHh\n")
    with pytest.raises(DataError, match=r"v\.csv: line 3 \(id 'p2'\): label 'h' at position 4 does not occur in the training split"):
        encode_records(read_records(valid), TOK, task, info, 1024)


def test_classification_on_numeric_labels_suggests_regression(tmp_path):
    rows = "".join(f"MKV{'ACDEFGHIKL'[i % 10]},{0.1 * i + 0.05:.3f}\n" for i in range(12))
    table = write(tmp_path, "stability.csv", "sequence,label\n" + rows)
    with pytest.raises(DataError, match=r"stability\.csv: the labels are numbers with 12 distinct values in 12 rows \(e\.g\. '0\.050', "
                                        r"'0\.150', '0\.250'\); sequence-classification would make one class per value\. "
                                        r"For a numeric target use --task sequence-regression"):
        _fit(get_task("sequence-classification"), table)
    ids = write(tmp_path, "ids.csv", "sequence,label\n" + "".join(f"MKV,{i % 12}\n" for i in range(24)))
    assert len(_fit(get_task("sequence-classification"), ids).names) == 12  # integer class ids stay classes
    assert len(get_task("sequence-regression").fit([r.label for r in read_records(table)], ["w"] * 12).names) == 0


# -- FLIP's files as they come: sequences + labels FASTA with SET= + mask FASTA -----------------

FLIP = DATA / "flip_ss3"


def flip(split, mask=True):
    return read_records(FLIP / "sequences.fasta", readers=fasta_readers(), labels_path=FLIP / "sampled.fasta",
                        mask_path=FLIP / "mask.fasta" if mask else None, split=split)


def test_flip_files_read_directly_split_by_set_and_validation():
    train, valid, test = flip("train"), flip("valid"), flip("test")
    assert [len(train), len(valid), len(test)] == [6, 3, 3]
    assert not {r.id for r in train} & {r.id for r in valid} | {r.id for r in train} & {r.id for r in test}
    assert [r.id for r in valid] == ["5msm-F", "3htu-C", "5b52-B"] and [r.id for r in test] == ["6o41-O", "6o5k-B", "6o6d-A"]
    assert len(flip(None, mask=False)) == 12  # no split named: every labelled record, as before


def test_flip_mask_blanks_the_labels_of_unresolved_residues():
    raw, masked = flip("train", mask=False)[0], flip("train")[0]
    # mask 0000111…1110: the first four residues and the last are unresolved
    assert raw.label[:5] == "CCCCC" and masked.label[:5] == "....C" and masked.label[-1] == "." and masked.label[-2] == raw.label[-2]
    assert len(masked.label) == len(masked.sequence)
    task = get_task("residue-classification")
    info = task.fit([r.label for r in flip("train")], [r.where for r in flip("train")])
    target = encode_records([masked], TOK, task, info, max_len=1024)[0].target
    assert (target[1:5] == IGNORE).all() and target[5] != IGNORE  # token i + 1 = residue i; ignored, not a class


def test_flip_mask_and_split_errors_name_file_and_record(tmp_path):
    seqs = write(tmp_path, "s.fasta", ">a\nMKV\n>b\nMKL\n")
    labels = write(tmp_path, "l.fasta", ">a SET=train VALIDATION=False\nHHE\n>b SET=train VALIDATION=False\nCCE\n")
    with pytest.raises(DataError, match=r"l\.fasta: no record of the test split \(SET=test in the '>id' header\) among the sequences"):
        read_records(seqs, readers=fasta_readers(), labels_path=labels, split="test")
    short = write(tmp_path, "m.fasta", ">a\n11\n>b\n111\n")
    with pytest.raises(DataError, match=r"m\.fasta: record 'a': mask of 2 residues for a label of 3"):
        read_records(seqs, readers=fasta_readers(), labels_path=labels, mask_path=short)
    odd = write(tmp_path, "n.fasta", ">a\n1x1\n>b\n111\n")
    with pytest.raises(DataError, match=r"n\.fasta: record 'a': mask character 'x' \(expected 0 = ignore, 1 = use\)"):
        read_records(seqs, readers=fasta_readers(), labels_path=labels, mask_path=odd)
    partial = write(tmp_path, "p.fasta", ">a\n111\n")
    with pytest.raises(DataError, match=r"s\.fasta: record 2 'b': no mask for this id in .*p\.fasta"):
        read_records(seqs, readers=fasta_readers(), labels_path=labels, mask_path=partial)
    twice = write(tmp_path, "t.fasta", ">a\nHHE\n>a\nCCE\n")
    with pytest.raises(DataError, match=r"t\.fasta: line 3: id 'a' appears twice"):
        read_records(seqs, readers=fasta_readers(), labels_path=twice)


def test_a_spreadsheet_byte_order_mark_is_not_part_of_the_first_column(tmp_path):
    table = tmp_path / "t.csv"
    table.write_bytes("\ufeffsequence,label\nMKV,1\n".encode("utf-8"))
    assert [(r.sequence, r.label) for r in read_records(table)] == [("MKV", "1")]
