"""Review page: the ranked queue with filters, the multiplanar viewer (axial / coronal / sagittal at full
resolution, crosshair, window/level, overlays, the run's uncertainty map, a 3D view) with corrections in the
browser (brush and eraser in mm, keep / remove a clicked component, fill a hole, over a slice range) and
keyboard-driven decisions, undo, the classic slice view as a fallback, and the 3D Slicer / ITK-SNAP round
trip. The viewer is a Streamlit component (``workbench/app_data/viewer_component/``); its data and the
preload of the next item are :mod:`workbench.app_data.multiplanar`; every edit it sends is saved through
``review.correct`` as a revised label set. A decision key draws the prefetched next item at once in the
browser (``draw_ahead``: the keys after which this page serves that item); the run the key starts writes
the decision and answers with the item it really serves. The queue is the reviewer's blind queue (one row
per scan x class; a double-read item the reviewer already read is left out, another reader's decision is
not shown, not even in the history); an item back after a decision says why (the Dice against the decided
label), and the status ``adjudication`` lists the double-read items whose readers disagree, with both
readings. A case opened from the Long tail page
(``browse_scan`` / ``browse_class`` in the session) is shown instead of the queue item until "Back to the
queue".

Every id, name, comment, path and message from the catalog or a file is shown through ``escape`` (the
pickers' option labels are plain text in Streamlit). A mask file that cannot be read (truncated, corrupt)
is one line above the viewer; the CT and every other class and scan still show. The catalog is pinned only
around the few quick reads of each step, never around an image read or a mask decode.
"""

from __future__ import annotations

import contextlib
import time
from typing import Any

import numpy as np
import streamlit as st

from harmonize.errors import HarmonizeError
from harmonize.taxonomy import class_names
from storage.workspace import Workspace
from workbench import app_data, review
from workbench.app_data import multiplanar
from workbench.app_pages import common, mpr_viewer
from workbench.app_pages.learnt import unlearnt_notice  # learnt classes (#12)
from workbench.review import escape, validate_reviewer
from workbench.review.validation import label_set_row, scan_affine

PAGE_STARTED = time.time()
ws = common.workspace()
assert ws is not None
root = str(ws.root)
st.title("Review")
QUEUE_ROWS = 200
#: Decisions and corrections of this run whose long-tail upkeep waits until the viewer has its answer.
LONG_TAIL_DUE: list[str] = []


def blind_reader() -> str | None:
    """The sidebar's reviewer name when it is valid (the reader whose blind queue is listed), else None;
    never a message (recording a decision says what is wrong with the name)."""
    assert ws is not None
    try:
        return validate_reviewer(ws, st.session_state.get("reviewer", "")) or None
    except HarmonizeError:
        return None


def remember(review_id: str, what: str, message: str) -> None:
    """Keep the session's last action (so it can be undone after the queue moved on to the next item),
    then rerun so the queue and the viewer show the new state, with ``message`` on top."""
    st.session_state["last_action"] = {"id": review_id, "what": what}
    st.session_state["flash"] = message
    st.rerun()


def note(review_id: str, what: str, message: str) -> None:
    """Keep the session's last action (for undo) and the message shown on top of this render."""
    st.session_state["last_action"] = {"id": review_id, "what": what}
    st.session_state["flash"] = message


def _undo_last(ws: Workspace, last: dict[str, str]) -> bool:
    """Undo the session's last action as the reviewer on the page; True when it was undone (a bad
    request is shown as a message by ``common.guarded``)."""
    name = common.reviewer(ws)
    if not name:
        return False
    with common.guarded():
        review.undo(ws, last["id"], name)
        st.session_state.pop("last_action")
        st.session_state["flash"] = f"Undone: {escape(last['what'])}"
        return True
    return False


def handle(action: dict[str, Any]) -> None:
    """Carry out one action the viewer sent, before the page is drawn, so this very run shows its result
    (the next item after a decision, the revised label set after an edit) without a second run. The
    action names the item it was made on (``target``: what was on screen), and that item gets it."""
    assert ws is not None
    received = time.time()
    common.record_timing("action_received", received)
    st.session_state["v_done"] = action.get("id")
    kind = str(action.get("action"))
    if kind in ("next_item", "previous_item"):
        if st.session_state.pop("v_editing", None) is None:
            st.session_state["q_item_step"] = 1 if kind == "next_item" else -1
        return
    if kind == "undo":
        last = st.session_state.get("last_action")
        if not last:
            st.session_state["v_message"] = "Nothing to undo in this session."
            return
        _undo_last(ws, last)
        return
    name = common.reviewer(ws)
    if not name:
        return
    target = action.get("target") or {}
    t_scan, t_class, t_set = (str(target.get(k, "")) for k in ("scan_id", "class_name", "label_set_id"))
    if kind == "decide":
        decision = str(action.get("decision"))
        with common.guarded(), ws.catalog.session():  # one connection for the checks and the write
            # the long tail's upkeep (~0.25 s at 10,000 scans) waits until the viewer has the next item
            rid = review.record_decision(
                ws, t_scan, t_class, t_set, decision, name, comment_text(), keep_long_tail=False
            )
            LONG_TAIL_DUE.append(rid)
            common.record_timing("decision_saved", received)
            st.session_state.pop("v_editing", None)
            note(
                rid,
                f"{decision} of {t_class} on {t_scan}",
                f"Recorded {decision} of {escape(t_class)} on {escape(t_scan)} by {escape(name)} ({rid}).",
            )
        return
    if kind not in multiplanar.EDITS:
        return
    with common.guarded(), ws.catalog.session():  # one connection for the checks and the write
        scan = review.scan_row(ws, t_scan)
        base_row = label_set_row(ws, t_set, t_scan)
        geometry = multiplanar.display_geometry(tuple(int(v) for v in scan["shape"]), scan_affine(scan))
        common.record_timing("edit_rows", received)
        base = (
            ws.masks.read(str(base_row["mask_key"]), t_class)
            if t_class in app_data.present_classes(ws, t_set)
            else np.zeros(geometry.file_shape, bool)
        )
        common.record_timing("edit_mask_read", received)
        fixed = multiplanar.apply_edit(geometry, base, action)
        common.record_timing("edit_applied", received)
        # the long tail's upkeep waits until the viewer has the revised label set, as for a decision
        text = comment_text() or kind.replace("_", " ")
        corr = review.correct(ws, t_scan, t_class, fixed, name, text, t_set, keep_long_tail=False)
        LONG_TAIL_DUE.append(corr.review_id)
        common.record_timing("edit_saved", received)
        st.session_state["v_editing"] = (t_scan, t_class)
        note(
            corr.review_id,
            f"correction of {t_class} on {t_scan}",
            f"Saved {escape(corr.label_set_id)} ({escape(kind.replace('_', ' '))}).",
        )


def comment_text() -> str:
    """The comment box's text (its value is in the session)."""
    return str(st.session_state.get("v_comment") or "")


# Fixed slots, so the viewer component keeps its place in the page (and its iframe, with the volumes it
# holds) whatever appears above it from one rerun to the next.
top_slot, queue_slot, notes_slot, viewer_slot = st.container(), st.container(), st.container(), st.container()
# One catalog connection for the run up to the viewer's arguments: the viewer's action (a decision's
# write), the queue and its upkeep, the scan's reads. Opening the catalog file costs 15-90 ms, and closing
# it after a write checkpoints the file (~0.75 s at 10,000 scans), so it closes once the viewer has its
# answer; when the item's payload must be built first (image reads, mask decodes) it closes before that.
# ``docs/decisions.md``, "The decision key".
with contextlib.ExitStack() as reads:
    reads.enter_context(ws.catalog.session())
    top_slot.__enter__()
    viewer_action = st.session_state.get("mpr")
    if isinstance(viewer_action, dict) and viewer_action.get("id") not in (
        None,
        st.session_state.get("v_done"),
    ):
        handle(viewer_action)
    flash = st.session_state.pop("flash", None)
    if flash:
        st.success(flash)
    last = st.session_state.get("last_action")
    if last:
        u1, u2 = st.columns([3, 1])
        u1.caption(f"Last action: {escape(last['what'])}")
        if u2.button("Undo last action", key="undo_last") and _undo_last(ws, last):
            st.rerun()

    top_slot.__exit__(None, None, None)
    queue_slot.__enter__()

    # ------------------------------------------------------------------------------------------ the queue
    with ws.catalog.session():
        n_items = ws.catalog.queue_size()
        sources = ws.catalog.source_ids()
        reasons = review.queue_reasons(ws) if n_items else []
    item = None
    next_row = None
    f_status = None
    if n_items == 0:
        st.info(
            "The review queue is empty: no pseudo-labels with uncertainty yet. Run a pseudo-labelling job "
            "(`workbench pseudolabel`) to fill it. Meanwhile you can browse any scan below."
        )
    else:
        f1, f2, f3, f4 = st.columns(4)
        f_classes = f1.multiselect("Class", class_names(), key="q_classes")
        f_sources = f2.multiselect("Source", sources, key="q_sources")
        f_reasons = f3.multiselect("Reason", reasons, key="q_reasons")
        f_status = f4.selectbox("Status", review.QUEUE_STATUSES, key="q_status")
        include_unlearnt = unlearnt_notice(ws)  # learnt classes (#12): one line per class, and a checkbox
        with common.guarded():
            q = review.queue(
                ws,
                classes=f_classes,
                sources=f_sources,
                reasons=f_reasons,
                status=f_status,
                reader=blind_reader(),
                limit=QUEUE_ROWS,
                include_unlearnt=include_unlearnt,  # learnt classes (#12)
            )
            common.record_timing("queue_listed", PAGE_STARTED)
            q["note"] = [review.requeue_note(r) or "" for r in q.to_dict("records")]
            st.caption(
                f"{len(q)} items shown (highest score first, at most {QUEUE_ROWS}); {n_items} in total"
            )
            st.dataframe(
                q[
                    [
                        "score",
                        "scan_id",
                        "class_name",
                        "source_id",
                        "origin",
                        "version",
                        "reasons",
                        "status",
                        "decided_by",
                        "readings",
                        "note",
                    ]
                ],
                width="stretch",
                hide_index=True,
                height=240,
            )
            if q.empty:
                st.success("Nothing matches these filters: the queue is done for them.")
            else:
                labels = [f"{r.score:.3f} · {r.scan_id} · {r.class_name}" for r in q.itertuples()]
                held = st.session_state.get("q_item")  # an index, or (Streamlit's choice) the option's label
                step = int(
                    st.session_state.pop("q_item_step", 0)
                )  # next / previous item from the viewer's keys
                if step and not isinstance(held, int):
                    held = next((i for i, label in enumerate(labels) if label == held), 0)
                if isinstance(held, int) and (step or held >= len(q)):  # moved, or the queue got shorter
                    st.session_state["q_item"] = min(max(held + step, 0), len(q) - 1)
                pick = st.selectbox("Item", range(len(q)), format_func=labels.__getitem__, key="q_item")
                item = q.iloc[int(pick or 0)].to_dict()
                next_row = q.iloc[int(pick or 0) + 1].to_dict() if int(pick or 0) + 1 < len(q) else None
                if item["note"]:
                    st.info(escape(item["note"]))
                if bool(item["double_read"]):
                    detail = app_data.reading_detail(ws, str(item["label_set_id"]), str(item["class_name"]))
                    if detail is None:
                        st.caption("Double-read item: two reviewers judge it blind to each other.")
                    elif blind_reader() in detail[1]:
                        st.caption(
                            f"The readers disagree: {escape(detail[0])}. A new decision of yours replaces "
                            "your reading; a third reviewer adjudicates."
                        )
                    else:
                        st.caption(f"Adjudicate: {escape(detail[0])}; your decision is the verdict.")

    def next_item_source(row: dict[str, Any]) -> multiplanar.ItemSource | None:
        """What the preload needs of the queue's next item (quick catalog reads), or None when it is gone."""
        assert ws is not None
        try:
            next_scan = review.scan_row(ws, str(row["scan_id"]))
            next_sets = app_data.label_sets_of(ws, str(row["scan_id"])).set_index("id")
        except HarmonizeError:
            return None
        ls = str(row["label_set_id"])
        if ls not in next_sets.index:
            return None
        return multiplanar.ItemSource(
            root,
            str(row["scan_id"]),
            str(next_scan["image_path"]),
            str(next_sets.loc[ls, "mask_key"]),
            tuple(app_data.present_classes(ws, ls)),
            str(row["class_name"]),
            str(row["run_id"]) if isinstance(row["run_id"], str) and row["run_id"] else None,
        )

    # ------------------------------------------------------------------------------------- case selection
    # A case opened elsewhere (a Long tail outlier) arrives as browse_scan / browse_class. With items in the
    # queue it overrides the queue item until "Back to the queue"; with an empty queue it presets the pickers.
    focus_scan = st.session_state.get("browse_scan")
    focus_class = st.session_state.get("browse_class")
    if focus_class not in class_names():
        focus_class = class_names()[0]
    editing = st.session_state.get("v_editing")  # (scan, class) corrected in the viewer: stays on screen
    if editing and not focus_scan:
        o1, o2 = st.columns([3, 1])
        o1.info(
            f"Correcting {escape(editing[1])} of {escape(editing[0])}: each edit is saved as a revised label "
            f"set (key {multiplanar.KEYS['undo']} undoes the last one). Key {multiplanar.KEYS['next_item']}: "
            "back to the queue."
        )
        if o2.button("Back to the queue", key="back_from_editing"):
            st.session_state.pop("v_editing", None)
            st.rerun()
        item = None
        scan_id, class_name = str(editing[0]), str(editing[1])
    elif n_items and focus_scan:
        o1, o2 = st.columns([3, 1])
        o1.info(
            f"Viewing outlier {escape(focus_scan)} · {escape(focus_class)} (opened from the Long tail), "
            "not the queue item."
        )
        if o2.button("Back to the queue", key="back_to_queue"):
            st.session_state.pop("browse_scan", None)
            st.session_state.pop("browse_class", None)
            st.rerun()
        item = None
        scan_id, class_name = str(focus_scan), str(focus_class)
    elif item is None:
        with ws.catalog.session():
            scans = app_data.scan_choices(ws)
        if focus_scan:  # a one-shot request: preset the pickers, then let the reviewer change them
            st.session_state.pop("browse_scan", None)
            st.session_state.pop("browse_class", None)
            st.session_state["v_scan"] = focus_scan
            st.session_state["v_class"] = focus_class
        picked = st.session_state.get("v_scan")
        if picked and picked not in scans:  # e.g. an outlier beyond the picker's first scans stays selected
            scans.append(str(picked))
        if not scans:
            st.stop()
        scan_id = st.selectbox("Scan", scans, key="v_scan")
        class_name = st.selectbox("Class", class_names(), key="v_class")
    if item is None:
        judged = None  # browsing: the current label set of the class
        run_id = None
    else:
        scan_id, class_name, judged, run_id = (
            item["scan_id"],
            item["class_name"],
            item["label_set_id"],
            item["run_id"],
        )

    # one connection for the scan's reads (opening a catalog of a million scans costs tens of ms); the label
    # set picker in between is a widget, no file work
    with ws.catalog.session():
        try:
            scan = review.scan_row(ws, scan_id)
            sets = app_data.label_sets_of(ws, scan_id)
            current = review.current_label_set(ws, scan_id, class_name)
        except HarmonizeError as e:  # e.g. an outlier link to a scan that is gone
            st.error(escape(e.problem))
            st.session_state.pop("browse_scan", None)
            st.stop()
        if sets.empty:
            st.warning(f"Scan {escape(scan_id)} has no label set.")
            st.stop()
        set_ids = sets["id"].tolist()
        set_label = {r.id: f"v{r.version} {r.origin} ({r.id})" for r in sets.itertuples()}
        shown = judged if judged in set_ids else (current if current in set_ids else set_ids[0])
        shown = st.selectbox(
            "Label set",
            set_ids,
            index=set_ids.index(shown),
            format_func=set_label.__getitem__,
            key=f"v_ls_{scan_id}_{class_name}_{shown}",
        )
        mask_keys = dict(zip(sets["id"], sets["mask_key"]))
        if run_id is None:  # browsing: a pseudo label set's own run may have a map
            shown_run = sets.set_index("id").loc[shown, "run_id"]
            run_id = str(shown_run) if isinstance(shown_run, str) and shown_run else None
        present = app_data.present_classes(ws, shown)
        # read here with the other quick reads: every write below reruns the page before it shows the history
        history = review.reviews(ws, scan_id, class_name)
        # side by side: the judged version next to the current one (e.g. pseudo vs original) where both exist
        compare_with = (
            current
            if current and current != shown and class_name in app_data.present_classes(ws, current)
            else None
        )
        next_source = next_item_source(next_row) if item is not None and next_row is not None else None
    no_map = app_data.uncertainty_unavailable(ws, run_id, scan_id)
    spacing_note = ws.catalog.run_config(run_id).get("spacing_note") if run_id is not None else None
    if item is not None and bool(item["double_read"]) and item["reading_state"] == "reading":
        # blind: while the item waits for its readings, the history shows only this reviewer's own decisions
        history = history[history["reviewer"] == blind_reader()]
    queue_slot.__exit__(None, None, None)

    # ------------------------------------------------------------------------------------------ the viewer
    def viewer_args(payload: multiplanar.Payload, next_payload: dict[str, Any] | None) -> dict[str, Any]:
        """The component's arguments for the shown item (JSON only)."""
        title_line = f"{scan_id} · {class_name} · {set_label[shown]}"
        item_args = multiplanar.component_item(payload, mpr_viewer.base_url(), class_name, title_line)
        item_args["view_key"] = multiplanar.view_key(scan_id, class_name)
        return {
            "item": item_args,
            "prefetch": [next_payload] if next_payload else [],
            "presets": {k: list(v) for k, v in app_data.WL_PRESETS.items()},
            "keys": multiplanar.KEYS,
            "heat_stops": [[x, list(c)] for x, c in app_data.HEAT_STOPS],
            "heat_floor": app_data.ENTROPY_FLOOR,
            "target": {"scan_id": scan_id, "class_name": class_name, "label_set_id": shown},
            "done": st.session_state.get("v_done"),
            # the decision keys that may draw the prefetched next item at once (the page serves it next)
            "draw_ahead": draw_ahead if next_payload is not None else [],
            "message": st.session_state.pop("v_message", ""),
        }

    source = multiplanar.ItemSource(
        root, scan_id, str(scan["image_path"]), str(mask_keys[shown]), tuple(present), class_name, run_id
    )
    notes_slot.__enter__()
    started = time.time()
    if mpr_viewer.payload_store().built(source) is None:
        reads.close()  # the payload is built now (image reads, mask decodes): not with the catalog open
    try:
        payload = mpr_viewer.prepare(ws, source)
    except (HarmonizeError, OSError) as e:  # the CT is unreadable: one line, the other scans still open
        where, problem = (e.path, e.problem) if isinstance(e, HarmonizeError) else (scan["image_path"], e)
        st.error(f"{escape(where)}: {escape(problem)}. {common.WAY_BACK}")
        st.stop()
    shown_problems = {
        f"{escape(path)}: {escape(problem)}. {common.WAY_BACK}" for path, problem in payload.problems
    }
    for line in sorted(shown_problems):
        st.error(line)
    if no_map is not None:
        st.caption(escape(no_map))
    elif run_id is not None:
        st.caption(
            f"Uncertainty map of run {escape(run_id)} (key {multiplanar.KEYS['toggle_heat']}). "
            f"{escape(app_data.HEAT_LEGEND)}"
        )
        if spacing_note:  # e.g. a release model run coarser than it was trained
            st.caption(f"Model run {escape(run_id)}: {escape(spacing_note)}")
    next_args = None
    if next_source is not None and next_row is not None:
        next_target = {k: str(next_row[k]) for k in ("scan_id", "class_name", "label_set_id")}
        next_title = (
            f"{next_target['scan_id']} · {next_target['class_name']} · v{next_row['version']} "
            f"{next_row['origin']} ({next_target['label_set_id']})"
        )
        next_args = mpr_viewer.preload(ws, next_source, next_title, next_target)
    # After a decision the page serves the item after this one when it lists the pending queue for a reviewer
    # whose name records and the decision takes the item out of that list: any decision of a single-read item
    # (its verdict), any but skip of a double-read one (skip is no reading). Otherwise the page answers alone.
    draw_ahead: list[str] = []
    if item is not None and f_status == "pending" and blind_reader() is not None:
        draw_ahead = [d for d in review.DECISIONS if d != "skip" or not bool(item["double_read"])]
    notes_slot.__exit__(None, None, None)
    viewer_slot.__enter__()  # the component first in its slot: its iframe (and the volumes it holds) stays
    mpr_viewer.VIEWER(**viewer_args(payload, next_args), key="mpr", default=None)
    common.record_timing("mpr", started)
    if LONG_TAIL_DUE:  # the write's deferred upkeep (a reader before it would refresh the table itself)
        with common.guarded():
            ws.catalog.keep_long_tail()
common.record_timing("catalog_closed", PAGE_STARTED)  # the viewer answered, the catalog closed
st.caption(
    "Keys (click the viewer or anywhere outside a text field first): "
    + " · ".join(f"**{escape(k)}** {escape(multiplanar.KEY_HELP[a])}" for a, k in multiplanar.KEYS.items())
)
classic = st.toggle("Classic slice view (fallback)", key="v_classic")
viewer_slot.__exit__(None, None, None)
if classic:
    try:
        dv = common.display_volume(root, scan_id, scan["image_path"])
    except (HarmonizeError, OSError) as e:  # the CT is unreadable: one line, the other scans still open
        where, problem = (e.path, e.problem) if isinstance(e, HarmonizeError) else (scan["image_path"], e)
        st.error(f"{escape(where)}: {escape(problem)}. {common.WAY_BACK}")
        st.stop()


def class_region() -> np.ndarray | None:
    """The item's class mask in display order (cached), or None when the shown label set lacks it or its
    file cannot be read."""
    if class_name not in present:
        return None
    masks, _ = common.display_masks(root, scan_id, scan["image_path"], mask_keys[shown], [class_name])
    return masks.get(class_name)


@st.fragment
def viewer() -> None:
    """Slice, window, overlays and the uncertainty map. A fragment: moving the slider or changing a class
    reruns only this part (the queue is not queried again); volume, masks and map come from the resource
    cache."""
    started = time.time()
    c1, c2, c3, c4 = st.columns(4)
    view = c1.radio("View", app_data.VIEWS, horizontal=True, key="v_view")
    preset = c2.selectbox("Window", [*app_data.WL_PRESETS, "free"], key="v_preset")
    if preset == "free":
        width = c3.number_input("Width (HU)", 1.0, 5000.0, 400.0, key="v_width")
        level = c4.number_input("Level (HU)", -1500.0, 3000.0, 40.0, key="v_level")
    else:
        width, level = app_data.WL_PRESETS[preset]
        c3.caption(f"W {width:.0f} / L {level:.0f}")
    overlay_names = st.multiselect(
        "Overlays", present, default=[class_name] if class_name in present else [], key=f"v_overlays_{shown}"
    )
    opacity = st.slider("Overlay opacity", 0.0, 1.0, 0.4, 0.05, key="v_opacity")
    masks, damaged = common.display_masks(root, scan_id, scan["image_path"], mask_keys[shown], overlay_names)
    for line in damaged:
        if line not in shown_problems:  # the viewer above named it already: one line per damaged file
            st.error(line)
    entropy = None
    if no_map is None and run_id is not None:
        with common.guarded():
            entropy = common.display_uncertainty(root, run_id, scan_id, scan["image_path"])
    u1, u2, u3, u4 = st.columns([1, 1, 1, 2])
    show_map = u1.checkbox("Uncertainty map", key="v_unc", disabled=entropy is None) and entropy is not None
    heat_opacity = u2.slider("Map opacity", 0.0, 1.0, 0.5, 0.05, key="v_unc_opacity", disabled=not show_map)
    jump_map = u3.button("Jump to the most uncertain slice", key="v_jump_unc", disabled=entropy is None)
    if entropy is None:
        u4.caption(escape(no_map or "the uncertainty map could not be read"))
    elif show_map:
        u4.image(app_data.entropy_legend(), caption=app_data.HEAT_LEGEND)
    else:
        u4.caption(f"uncertainty map of run {escape(run_id)}: most uncertain slice = largest sum of entropy")
    if run_id is not None and ws is not None:  # e.g. a release model run coarser than it was trained
        spacing_note = ws.catalog.run_config(run_id).get("spacing_note")
        if spacing_note:
            st.caption(f"Model run {escape(run_id)}: {escape(spacing_note)}")
    n_slices = dv.n_slices(view)
    slice_key = f"v_slice_{scan_id}_{view}"
    if slice_key not in st.session_state:
        hint = app_data.uncertainty_slice_hint(entropy, view, class_region()) if item is not None else None
        best = app_data.best_slice(masks[class_name], view) if class_name in masks else None
        st.session_state[slice_key] = (
            hint if hint is not None else (best if best is not None else n_slices // 2)
        )
    if st.button(f"Jump to the slice with most {escape(class_name)}", key="v_jump") and class_name in masks:
        best = app_data.best_slice(masks[class_name], view)
        if best is not None:
            st.session_state[slice_key] = best
    if jump_map and entropy is not None:
        most = app_data.most_uncertain_slice(entropy, view, class_region())
        if most is not None:
            st.session_state[slice_key] = most
    index = st.slider("Slice", 0, n_slices - 1, key=slice_key)
    heat = entropy if show_map else None
    rgb = app_data.slice_image(dv, view, index, width, level, masks, opacity, heat, heat_opacity)
    image = app_data.annotate_edges(rgb, app_data.view_labels(view))
    compare = None
    other, damaged_other = (
        common.display_masks(root, scan_id, scan["image_path"], mask_keys[compare_with], [class_name])
        if compare_with is not None
        else ({}, [])
    )
    for line in damaged_other:
        if line not in shown_problems:
            st.error(line)
    if other:
        compare = app_data.annotate_edges(
            app_data.slice_image(dv, view, index, width, level, other, opacity, heat, heat_opacity),
            app_data.view_labels(view),
        )
    if compare is None:
        st.image(
            image,
            caption=f"{escape(scan_id)} · {view} {index + 1}/{n_slices} · radiological (patient R on the "
            "left)",
        )
    else:
        a, b = st.columns(2)
        a.image(image, caption=f"{escape(set_label[shown])} · {view} {index + 1}/{n_slices}")
        b.image(compare, caption=f"current: {escape(set_label[str(compare_with)])}")
    common.record_timing("viewer", started)


if classic:
    viewer()

# ---------------------------------------------------------------------------------------- decisions
st.subheader(f"Decision on {escape(class_name)} of {escape(scan_id)}")
comment = st.text_area("Comment", key="v_comment", height=68)
b1, b2, b3, b4 = st.columns(4)
clicked = None
for col, decision, label in (
    (b1, "accept", "Accept"),
    (b2, "reject", "Reject"),
    (b3, "needs_correction", "Needs correction"),
    (b4, "skip", "Skip"),
):
    if col.button(label, key=f"d_{decision}"):
        clicked = decision
# The decision lands on the case that was ON SCREEN when the button was clicked: the previous full
# render's. Another reviewer (or a pseudo-labelling job) can move the queue between that render and this
# rerun, and the item recomputed above may then be a different one.
seen = st.session_state.get("v_seen") or (scan_id, class_name, shown)
st.session_state["v_seen"] = (scan_id, class_name, shown)
if clicked:
    name = common.reviewer(ws)
    if name:
        d_scan, d_class, d_set = seen
        with common.guarded():
            rid = review.record_decision(ws, d_scan, d_class, d_set, clicked, name, comment)
            remember(
                rid,
                f"{clicked} of {d_class} on {d_scan}",
                f"Recorded {clicked} of {escape(d_class)} on {escape(d_scan)} by {escape(name)} ({rid}).",
            )

st.markdown("**Quick fixes** (each writes a new revised label set; undo restores the previous one)")
q1, q2 = st.columns(2)
if q1.button("Keep the largest component", key="fix_largest"):
    name = common.reviewer(ws)
    if name and class_name in present:
        with common.guarded():
            fixed = review.keep_largest(ws.masks.read(mask_keys[shown], class_name))
            corr = review.correct(
                ws, scan_id, class_name, fixed, name, comment or "keep largest component", shown
            )
            remember(
                corr.review_id,
                f"correction of {class_name} on {scan_id}",
                f"Saved {escape(corr.label_set_id)}.",
            )
q2.caption(
    "Remove or keep a component, brush, erase and fill holes in the viewer above: pick the tool (or its "
    "key), then click or drag on a plane; each edit is saved as a revised label set."
)

st.subheader("History")
if history.empty:
    st.caption("No decisions yet for this scan and class.")
else:
    st.dataframe(
        history[
            ["created_at", "decision", "reviewer", "comment", "label_set_id", "result_label_set_id", "undone"]
        ],
        width="stretch",
        hide_index=True,
    )
    standing = history[(history["decision"] != "undo") & ~history["undone"].astype(bool)]
    if not standing.empty:
        newest = standing.iloc[0]
        newest_label = f"{escape(newest['decision'])} by {escape(newest['reviewer'])}"
        if st.button(f"Undo the newest decision ({newest_label})", key="undo"):
            name = common.reviewer(ws)
            if name:
                with common.guarded():
                    review.undo(ws, str(newest["id"]), name)
                    st.session_state["flash"] = "Undone."
                    st.rerun()

with st.expander("Edit in 3D Slicer or ITK-SNAP"):
    if st.button("Export this case", key="slicer_export"):
        with common.guarded():
            files = review.export_case_for_slicer(ws, scan_id)
            out = files["ct.nii.gz"].parent
            st.success(
                f"Wrote {escape(', '.join(files))} to {escape(out)}; edit the label map that holds the class "
                "(labels.json lists each layer's classes) and upload it below."
            )
    upload = st.file_uploader("Corrected label NIfTI", type=["nii", "gz"], key="slicer_upload")
    if upload is not None and st.button("Import the correction", key="slicer_import"):
        name = common.reviewer(ws)
        if name:
            with common.guarded():
                corr = review.import_correction_upload(
                    ws, scan_id, class_name, upload.name, upload.getvalue(), name, comment
                )
                if not corr.changed:
                    st.info(f"The file holds {escape(class_name)} exactly as it is: nothing was imported.")
                    st.stop()
                remember(
                    corr.review_id,
                    f"imported correction of {class_name} on {scan_id}",
                    f"Imported as {escape(corr.label_set_id)}.",
                )

common.record_timing("review_page", PAGE_STARTED)
