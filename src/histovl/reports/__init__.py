"""Reports: run records (run.json), the evaluation output folder, figures and HTML reports.

Typical use by an evaluation command::

    from histovl.reports import (build_run_record, predictions_frame,
                                 build_classification_report, write_evaluation_outputs)
    frame = predictions_frame(paths, labels, probs, class_names, root=data_root)
    record = build_run_record(command="zeroshot", config=cfg, models=[enc.card],
                              prompt_set=prompts, seed=0, inputs=paths, skipped=skips)
    report = build_classification_report("Zero-shot", metrics, frame, record, image_root=data_root)
    write_evaluation_outputs(out_dir, metrics=metrics, predictions=frame,
                             run_record=record, report=report)

Other commands build their own `Report` from the generic sections in `histovl.reports.html`.
"""

from histovl.reports.figures import (
    confusion_matrix_figure,
    per_class_bar_figure,
    save_figure,
    select_confident_examples,
)
from histovl.reports.html import GridItem, Report
from histovl.reports.outputs import (
    build_classification_report,
    find_non_finite,
    multilabel_predictions_frame,
    multilabel_predictions_table,
    predictions_frame,
    predictions_table,
    write_evaluation_outputs,
)
from histovl.reports.run_record import build_run_record, git_info, input_hash, package_versions
from histovl.reports.table import Table

__all__ = [
    "GridItem",
    "Report",
    "Table",
    "build_classification_report",
    "build_run_record",
    "confusion_matrix_figure",
    "find_non_finite",
    "git_info",
    "input_hash",
    "multilabel_predictions_frame",
    "multilabel_predictions_table",
    "package_versions",
    "per_class_bar_figure",
    "predictions_frame",
    "predictions_table",
    "save_figure",
    "select_confident_examples",
    "write_evaluation_outputs",
]
