"""The catalog's schema: tables, their migrations, and the views that state the workbench's rules once.

``MIGRATIONS[v]`` turns a v-1 catalog into a v one; :class:`storage.catalog.Catalog` applies the missing
ones in order, each in its own transaction, and refuses a catalog newer than :data:`SCHEMA_VERSION`.
``docs/catalog.md`` describes every column.

The views (schema v7):

* ``current_label``: per scan x class whose state is known (``annotated_present`` / ``annotated_absent``),
  the one label set that answers for it by THE ASSEMBLY RULE, used by training sets, exports,
  statistics and evaluation alike: ``revised > original > accepted pseudo > pseudo``, newest version
  first within one basis; a pseudo-label whose ``verdict`` (below) is ``reject`` or
  ``needs_correction`` is never used. Columns ``scan_id, class_name, state, label_set_id, mask_key,
  origin, version, basis``; ``basis`` is ``revised``, ``original``, ``accepted`` (a pseudo-label a
  reviewer accepted) or ``pseudo``. Decisions apply to pseudo-labels only: an expert's ``original``
  labels are replaced by a correction (``revised``), not by a reject. ``current_label_of(bases)`` is
  the same rule over a chosen list of bases (a table macro), e.g. ``SELECT * FROM
  current_label_of(['original'])``; ``'pseudo'`` in the list admits accepted pseudo-labels too.
* ``current_original``: per scan, its newest ``original`` label set (``scan_id, label_set_id``): what
  the source itself annotated, as the statistics and the reference ranges read it.
* ``standing_review``: the review decisions that stand: every row of ``review`` that is not an undo and
  has not been undone.
* ``verdict``: per scan x class x label set that has a standing decision, the one that counts (the
  newest): ``scan_id, class_name, label_set_id, decision, reviewer, decided_at, review_id``. The
  assembly rule and the queue read decisions only through it.

Double reading and the requeue check (schema v8; ``docs/catalog.md``):

* ``reading``: standing decisions (not ``skip``) on double-read items (``reading_plan.double_read``), with
  ``reader_rank`` (1 and 2: the readers, in the order of their first decision; higher: adjudicators).
* ``double_read_item``: per double-read item both readers' newest decisions, their inter-reader Dice
  (``reading_dice``), the newest adjudication and ``state`` (``reading`` / ``agreed`` / ``disagreed`` /
  ``adjudicated``).
* ``decided``: the decision that counts per item: single-read the newest standing one; double-read the
  adjudication, else the readers' common decision, else none.
* ``prior_decision``: per queue item, the newest settling decision on an OLDER version of its scan x class
  and the label it decided (the corrected set for ``corrected``).
* ``verdict`` (redefined): ``decided``, plus a reject / needs_correction carried to a later item whose
  ``requeue_check`` Dice against it is at or above the stored threshold (column ``reading``).
* ``held_revision``: a double-read reader's correction while the item's verdict is not ``corrected``;
  ``current_label_of`` does not use it.
"""

from __future__ import annotations

from collections.abc import Sequence

SCHEMA_VERSION = 15

#: Where a label set comes from: the source's own annotation, a model run, or a reviewer.
ORIGINS = ("original", "pseudo", "revised")

#: The bases of the assembly rule: the origins, with ``accepted`` for a pseudo-label a reviewer accepted.
BASES = ("revised", "original", "accepted", "pseudo")

#: The assembly rule's priority (``current_label``): higher wins for a scan x class.
BASIS_PRIORITY = {"revised": 4, "original": 3, "accepted": 2, "pseudo": 1}

#: The merge priority of the label-set origins alone (``accepted`` ranks within ``pseudo``).
ORIGIN_PRIORITY = {"revised": 3, "original": 2, "pseudo": 1}

#: Standing decisions that take a pseudo-label out of every training set, export and statistic.
EXCLUDING_DECISIONS = ("reject", "needs_correction")

#: Decisions that settle a scan x class: a later run's item of it is re-queued only when its prediction
#: differs materially from the decided label (``requeue_check``, v8).
SETTLING_DECISIONS = ("accept", "reject", "corrected", "needs_correction")

#: The tables the decision and assembly rules read (every one has a ``scan_id``, except ``class_coverage``,
#: read through its label sets): the rows of one scan decide that scan's answers alone.
RULE_TABLES = (
    "review",
    "reading_plan",
    "reading_dice",
    "requeue_check",
    "uncertainty",
    "label_set",
    "class_coverage",
)

#: THE RULES as text (schema v13): each view's SELECT over the relations it reads, named in braces (a
#: table of :data:`RULE_TABLES` or an earlier view), in the order they build on each other. The same text
#: defines the views over whole tables (:func:`rule_views_sql`, migration 12) and, over the rows of a few
#: scans, the refreshes of the maintained tables (:func:`scoped_rules_sql`): no filter on a scan reaches
#: below the views' windows and aggregations, rows restricted before them do.
RULE_VIEWS: dict[str, str] = {
    "standing_review": """
        SELECT r.* FROM {review} r
        WHERE r.decision <> 'undo'
          AND r.id NOT IN (SELECT undo_of FROM {review} WHERE decision = 'undo' AND undo_of IS NOT NULL)
    """,
    "reading": """
        WITH r AS (
            SELECT s.*,
                   min(s.created_at) OVER (PARTITION BY s.label_set_id, s.class_name, s.reviewer) AS first_at
            FROM {standing_review} s
            JOIN {reading_plan} p ON p.label_set_id = s.label_set_id AND p.class_name = s.class_name
            WHERE p.double_read AND s.decision <> 'skip'
        )
        SELECT *, dense_rank() OVER (PARTITION BY label_set_id, class_name ORDER BY first_at, reviewer)
                  AS reader_rank
        FROM r
    """,
    "double_read_item": """
        WITH newest AS (
            SELECT * FROM {reading} WHERE reader_rank <= 2
            QUALIFY row_number() OVER (
                PARTITION BY label_set_id, class_name, reviewer ORDER BY created_at DESC, id DESC) = 1
        ), pair AS (
            SELECT label_set_id, class_name, count(*) AS readings,
                   max(CASE WHEN reader_rank = 1 THEN id END) AS review_a,
                   max(CASE WHEN reader_rank = 1 THEN reviewer END) AS reader_a,
                   max(CASE WHEN reader_rank = 1 THEN decision END) AS decision_a,
                   max(CASE WHEN reader_rank = 1 THEN result_label_set_id END) AS result_a,
                   max(CASE WHEN reader_rank = 2 THEN id END) AS review_b,
                   max(CASE WHEN reader_rank = 2 THEN reviewer END) AS reader_b,
                   max(CASE WHEN reader_rank = 2 THEN decision END) AS decision_b,
                   max(CASE WHEN reader_rank = 2 THEN result_label_set_id END) AS result_b,
                   max(created_at) AS read_at
            FROM newest GROUP BY label_set_id, class_name
        ), adjudication AS (
            SELECT label_set_id, class_name, arg_max(id, created_at) AS adjudication_id,
                   arg_max(decision, created_at) AS adjudication,
                   arg_max(reviewer, created_at) AS adjudicator,
                   max(created_at) AS adjudicated_at
            FROM {reading} WHERE reader_rank > 2 GROUP BY label_set_id, class_name
        )
        SELECT p0.scan_id, p0.class_name, p0.label_set_id, coalesce(p.readings, 0) AS readings,
               p.review_a, p.reader_a, p.decision_a, p.result_a,
               p.review_b, p.reader_b, p.decision_b, p.result_b, p.read_at,
               x.dice AS reading_dice, x.threshold AS agreement_dice,
               a.adjudication_id, a.adjudication, a.adjudicator, a.adjudicated_at,
               CASE WHEN a.adjudication_id IS NOT NULL THEN 'adjudicated'
                    WHEN coalesce(p.readings, 0) < 2 THEN 'reading'
                    WHEN p.decision_a = p.decision_b
                         AND (p.decision_a <> 'corrected' OR x.dice >= x.threshold) THEN 'agreed'
                    ELSE 'disagreed' END AS state
        FROM {reading_plan} p0
        LEFT JOIN pair p ON p.label_set_id = p0.label_set_id AND p.class_name = p0.class_name
        LEFT JOIN {reading_dice} x ON x.review_a = p.review_a AND x.review_b = p.review_b
        LEFT JOIN adjudication a ON a.label_set_id = p0.label_set_id AND a.class_name = p0.class_name
        WHERE p0.double_read
    """,
    "decided": """
        SELECT scan_id, class_name, label_set_id, arg_max(decision, created_at) AS decision,
               arg_max(reviewer, created_at) AS reviewer, max(created_at) AS decided_at,
               arg_max(id, created_at) AS review_id, 'single' AS reading
        FROM {standing_review} s
        WHERE NOT EXISTS (
            SELECT 1 FROM {reading_plan} p
            WHERE p.double_read AND p.label_set_id = s.label_set_id AND p.class_name = s.class_name)
        GROUP BY scan_id, class_name, label_set_id
        UNION ALL BY NAME
        SELECT scan_id, class_name, label_set_id,
               CASE state WHEN 'adjudicated' THEN adjudication ELSE decision_b END AS decision,
               CASE state WHEN 'adjudicated' THEN adjudicator ELSE reader_b END AS reviewer,
               CASE state WHEN 'adjudicated' THEN adjudicated_at ELSE read_at END AS decided_at,
               CASE state WHEN 'adjudicated' THEN adjudication_id ELSE review_b END AS review_id,
               CASE state WHEN 'adjudicated' THEN 'adjudicated' ELSE 'double' END AS reading
        FROM {double_read_item} WHERE state IN ('adjudicated', 'agreed')
    """,
    "prior_decision": """
        WITH settling AS (
            SELECT * FROM {decided} WHERE decision IN ('accept', 'reject', 'corrected', 'needs_correction')
        ), item AS (
            SELECT DISTINCT u.scan_id, u.class_name, u.label_set_id, l.version
            FROM {uncertainty} u JOIN {label_set} l ON l.id = u.label_set_id
            SEMI JOIN settling d ON d.scan_id = u.scan_id AND d.class_name = u.class_name
        )
        SELECT i.scan_id, i.class_name, i.label_set_id, v.decision, v.reviewer, v.decided_at, v.review_id,
               coalesce(CASE WHEN v.decision = 'corrected' THEN r.result_label_set_id END, v.label_set_id)
                   AS decided_label_set_id
        FROM item i
        JOIN settling v ON v.scan_id = i.scan_id AND v.class_name = i.class_name
        JOIN {label_set} vl ON vl.id = v.label_set_id AND vl.version < i.version
        LEFT JOIN {review} r ON r.id = v.review_id
        QUALIFY row_number() OVER (
            PARTITION BY i.label_set_id, i.class_name
            ORDER BY vl.version DESC, v.decided_at DESC, v.review_id DESC
        ) = 1
    """,
    "verdict": """
        SELECT scan_id, class_name, label_set_id, decision, reviewer, decided_at, review_id, reading
        FROM {decided}
        UNION ALL BY NAME
        SELECT p.scan_id, p.class_name, p.label_set_id, p.decision, p.reviewer, p.decided_at, p.review_id,
               'carried' AS reading
        FROM {prior_decision} p
        JOIN {requeue_check} c
          ON c.label_set_id = p.label_set_id AND c.class_name = p.class_name AND c.review_id = p.review_id
        WHERE p.decision IN ('reject', 'needs_correction') AND c.dice >= c.threshold
          AND NOT EXISTS (
              SELECT 1 FROM {decided} d WHERE d.label_set_id = p.label_set_id AND d.class_name = p.class_name)
    """,
    "held_revision": """
        SELECT DISTINCT r.result_label_set_id AS label_set_id, r.class_name
        FROM {reading} r
        LEFT JOIN {decided} v ON v.label_set_id = r.label_set_id AND v.class_name = r.class_name
        WHERE r.decision = 'corrected' AND r.reader_rank <= 2 AND r.result_label_set_id IS NOT NULL
          AND v.decision IS DISTINCT FROM 'corrected'
    """,
}

#: THE ASSEMBLY RULE as text (the body of the table macro ``current_label_of(bases)``; ``{bases}``: the
#: list of bases, the macro's parameter or a constant list).
ASSEMBLY_RULE = """
    WITH candidate AS (
        SELECT l.scan_id, c.class_name, c.state, l.id AS label_set_id, l.mask_key, l.origin, l.version,
               CASE WHEN h.label_set_id IS NOT NULL THEN 'rejected'
                    WHEN l.origin <> 'pseudo' THEN l.origin
                    WHEN v.decision = 'accept' THEN 'accepted'
                    WHEN v.decision IN ('reject', 'needs_correction') THEN 'rejected'
                    ELSE 'pseudo' END AS basis
        FROM {class_coverage} c JOIN {label_set} l ON l.id = c.label_set_id
        LEFT JOIN {verdict} v ON v.label_set_id = c.label_set_id AND v.class_name = c.class_name
        LEFT JOIN {held_revision} h ON h.label_set_id = c.label_set_id AND h.class_name = c.class_name
        WHERE c.state <> 'not_annotated'
    )
    SELECT * FROM candidate
    WHERE basis <> 'rejected'
      AND (list_contains({bases}, basis) OR (basis = 'accepted' AND list_contains({bases}, 'pseudo')))
    QUALIFY row_number() OVER (
        PARTITION BY scan_id, class_name
        ORDER BY CASE basis WHEN 'revised' THEN 4 WHEN 'original' THEN 3 WHEN 'accepted' THEN 2 ELSE 1 END
                 DESC, version DESC
    ) = 1
"""


def rule_views_sql() -> str:
    """The statements that (re)create the rules' views and the assembly macro over whole tables from
    :data:`RULE_VIEWS` and :data:`ASSEMBLY_RULE` (migration 12).

    Returns:
        SQL text: ``CREATE OR REPLACE VIEW`` per view in order, then the macro ``current_label_of`` and the
        view ``current_label``.
    """
    names = {n: n for n in (*RULE_TABLES, *RULE_VIEWS)}
    views = [f"CREATE OR REPLACE VIEW {n} AS {body.format(**names)};" for n, body in RULE_VIEWS.items()]
    return "\n".join(
        [
            *views,
            "DROP VIEW current_label;",
            "DROP MACRO TABLE current_label_of;",
            f"CREATE MACRO current_label_of(bases) AS TABLE {ASSEMBLY_RULE.format(bases='bases', **names)};",
            "CREATE VIEW current_label AS SELECT * FROM current_label_of(['revised', 'original', 'pseudo']);",
        ]
    )


def scoped_rules_sql(n_scans: int, bases: Sequence[str] = ("revised", "original", "pseudo")) -> str:
    """A ``WITH`` clause that states the rules over the rows of ``n_scans`` scans only: per table of
    :data:`RULE_TABLES` a relation ``<table>_in`` of those scans' rows, per view of :data:`RULE_VIEWS`
    ``<view>_in`` over them, and ``current_label_in``: the assembly rule among ``bases``. Every answer of
    the rules for those scans equals the views' (each depends on its own scan's rows only). A scan's
    rows are those with its ``scan_id`` whose label set is one of the scan's, as every writer stores them
    (a review, a reading plan, a Dice row, a requeue check or an uncertainty row names the label set it
    is about, of that scan).

    Args:
        n_scans: how many scan ids follow as parameters (``?``), once per table that has a ``scan_id``
            (:func:`scoped_rules_params` repeats them).
        bases: the assembly rule's bases (:data:`BASES`).

    Returns:
        ``WITH review_in AS (...), ..., current_label_in AS (...)`` (no trailing comma).

    Raises:
        ValueError: ``n_scans`` < 1 or an unknown basis.
    """
    if n_scans < 1:
        raise ValueError(f"scoped rules need at least one scan, got {n_scans}")
    unknown = sorted(set(bases) - set(BASES))
    if unknown:
        raise ValueError(f"unknown bases {unknown}; use {list(BASES)}")
    marks = ", ".join(["?"] * n_scans)
    names = {n: f"{n}_in" for n in (*RULE_TABLES, *RULE_VIEWS)}
    # the scans' label sets first (an index scan); every other table's rows of those scans also by their
    # label set: the semi join's filter skips row groups of tables clustered by label set (zonemaps)
    ctes = [f"label_set_in AS (SELECT * FROM label_set WHERE scan_id IN ({marks}))"]
    ctes += [
        f"{t}_in AS (SELECT * FROM {t} SEMI JOIN label_set_in l ON {t}.label_set_id = l.id "
        f"WHERE {t}.scan_id IN ({marks}))"
        for t in RULE_TABLES
        if t not in ("label_set", "class_coverage")
    ]
    ctes.append(
        "class_coverage_in AS (SELECT * FROM class_coverage SEMI JOIN label_set_in l ON label_set_id = l.id)"
    )
    ctes += [f"{n}_in AS ({body.format(**names)})" for n, body in RULE_VIEWS.items()]
    literal = "[" + ", ".join(f"'{b}'" for b in bases) + "]"
    ctes.append(f"current_label_in AS ({ASSEMBLY_RULE.format(bases=literal, **names)})")
    return "WITH " + ",\n".join(ctes)


def scoped_rules_params(scan_ids: Sequence[str]) -> list[str]:
    """The parameters of :func:`scoped_rules_sql` ``(len(scan_ids))``: the ids once per table that has a
    ``scan_id`` (label sets first)."""
    return [str(s) for s in scan_ids] * (len(RULE_TABLES) - 1)


def _enum(values: Sequence[str]) -> str:
    return "ENUM (" + ", ".join(f"'{v}'" for v in values) + ")"


#: The known coverage states (a current label never has ``not_annotated``).
KNOWN_STATES = ("annotated_present", "annotated_absent")

#: Migration 12's rebuild of ``assembled_label`` with dictionary types for its fixed-domain columns (it is
#: refilled by its first reader: ``derived_meta`` forgets it).
ASSEMBLED_LABEL_V13 = f"""
    CREATE TYPE known_state AS {_enum(KNOWN_STATES)};
    CREATE TYPE label_origin AS {_enum(ORIGINS)};
    CREATE TYPE label_basis AS {_enum(BASES)};
    DROP TABLE assembled_label;
    CREATE TABLE assembled_label (
        scan_id VARCHAR NOT NULL, source_id VARCHAR NOT NULL, image_path VARCHAR NOT NULL,
        class_name VARCHAR NOT NULL, state known_state NOT NULL, label_set_id VARCHAR NOT NULL,
        mask_key VARCHAR NOT NULL, origin label_origin NOT NULL, basis label_basis NOT NULL,
        version INTEGER NOT NULL
    );
    DELETE FROM derived_meta WHERE name = 'assembled_label';
"""

#: Migration 14's rebuild of ``assembled_label``: ``mask_key`` is NULL where it equals ``label_set_id``
#: (:meth:`storage.catalog.Catalog.training_rows` fills it back without a copy).
ASSEMBLED_LABEL_V14 = """
    DROP TABLE assembled_label;
    CREATE TABLE assembled_label (
        scan_id VARCHAR NOT NULL, source_id VARCHAR NOT NULL, image_path VARCHAR NOT NULL,
        class_name VARCHAR NOT NULL, state known_state NOT NULL, label_set_id VARCHAR NOT NULL,
        mask_key VARCHAR, origin label_origin NOT NULL, basis label_basis NOT NULL, version INTEGER NOT NULL
    );
    DELETE FROM derived_meta WHERE name = 'assembled_label';
"""


MIGRATIONS: dict[int, str] = {
    1: """
    CREATE TABLE source (
        id VARCHAR PRIMARY KEY,
        name VARCHAR NOT NULL,
        protocol_version INTEGER NOT NULL,
        annotated VARCHAR[] NOT NULL,
        merged_pairs VARCHAR[] NOT NULL,
        layout_kind VARCHAR NOT NULL,
        reference VARCHAR,
        registered_at TIMESTAMP NOT NULL
    );
    CREATE TABLE scan (
        id VARCHAR PRIMARY KEY,
        source_id VARCHAR NOT NULL,
        case_id VARCHAR NOT NULL,
        image_path VARCHAR NOT NULL,
        label_path VARCHAR NOT NULL,
        image_sha256 VARCHAR NOT NULL,
        image_bytes BIGINT,
        image_mtime DOUBLE,
        shape INTEGER[3] NOT NULL,
        spacing DOUBLE[3] NOT NULL,
        axcodes VARCHAR NOT NULL,
        affine DOUBLE[16] NOT NULL,
        hu_min DOUBLE,
        hu_max DOUBLE,
        image_format VARCHAR,
        series_uid_sha1 VARCHAR,
        ingested_at TIMESTAMP NOT NULL,
        UNIQUE (source_id, case_id)
    );
    CREATE INDEX scan_sha ON scan (image_sha256);
    CREATE TABLE label_set (
        id VARCHAR PRIMARY KEY,
        scan_id VARCHAR NOT NULL,
        version INTEGER NOT NULL,
        origin VARCHAR NOT NULL CHECK (origin IN ('original', 'pseudo', 'revised')),
        parent_id VARCHAR,
        run_id VARCHAR,
        author VARCHAR,
        protocol_version INTEGER,
        label_sha256 VARCHAR,
        label_bytes BIGINT,
        label_mtime DOUBLE,
        mask_key VARCHAR NOT NULL,
        midline_x_mm DOUBLE,
        midline_method VARCHAR,
        native_voxels VARCHAR,
        notes VARCHAR[],
        created_at TIMESTAMP NOT NULL,
        UNIQUE (scan_id, version)
    );
    CREATE TABLE class_coverage (
        label_set_id VARCHAR NOT NULL,
        scan_id VARCHAR NOT NULL,
        class_name VARCHAR NOT NULL,
        state VARCHAR NOT NULL CHECK (state IN ('annotated_present', 'annotated_absent', 'not_annotated')),
        PRIMARY KEY (label_set_id, class_name)
    );
    CREATE TABLE class_stats (
        label_set_id VARCHAR NOT NULL,
        class_name VARCHAR NOT NULL,
        voxels BIGINT NOT NULL,
        volume_ml DOUBLE NOT NULL,
        components INTEGER NOT NULL,
        bbox INTEGER[6] NOT NULL,
        centroid_mm DOUBLE[3] NOT NULL,
        hu_mean DOUBLE,
        hu_std DOUBLE,
        PRIMARY KEY (label_set_id, class_name)
    );
    CREATE TABLE split_decision (
        label_set_id VARCHAR NOT NULL,
        pair VARCHAR NOT NULL,
        component INTEGER NOT NULL,
        voxels BIGINT NOT NULL,
        centroid_mm DOUBLE[3] NOT NULL,
        side VARCHAR NOT NULL,
        method VARCHAR NOT NULL,
        left_voxels BIGINT NOT NULL,
        right_voxels BIGINT NOT NULL,
        midline_x_mm DOUBLE NOT NULL
    );
    CREATE TABLE run (
        id VARCHAR PRIMARY KEY,
        kind VARCHAR NOT NULL,
        checkpoint_sha256 VARCHAR,
        text_encoder VARCHAR,
        vocabulary_sha256 VARCHAR,
        device VARCHAR,
        config VARCHAR,
        metrics VARCHAR,
        timings VARCHAR,
        started_at TIMESTAMP NOT NULL,
        finished_at TIMESTAMP
    );
    CREATE TABLE text_vocabulary (
        sha256 VARCHAR PRIMARY KEY,
        name VARCHAR NOT NULL,
        encoder VARCHAR NOT NULL,
        weights VARCHAR,
        template VARCHAR NOT NULL,
        class_names VARCHAR[] NOT NULL,
        prompts VARCHAR[] NOT NULL,
        dim INTEGER NOT NULL,
        embeddings BLOB NOT NULL,
        created_at TIMESTAMP NOT NULL
    );
    CREATE TABLE uncertainty (
        scan_id VARCHAR NOT NULL,
        class_name VARCHAR NOT NULL,
        run_id VARCHAR NOT NULL,
        label_set_id VARCHAR NOT NULL,
        score DOUBLE NOT NULL,
        signals VARCHAR,
        reasons VARCHAR[],
        PRIMARY KEY (scan_id, class_name, run_id)
    );
    CREATE TABLE review (
        id VARCHAR PRIMARY KEY,
        scan_id VARCHAR NOT NULL,
        class_name VARCHAR NOT NULL,
        label_set_id VARCHAR NOT NULL,
        decision VARCHAR NOT NULL
            CHECK (decision IN ('accept', 'reject', 'corrected', 'needs_correction', 'skip')),
        comment VARCHAR,
        reviewer VARCHAR NOT NULL,
        result_label_set_id VARCHAR,
        created_at TIMESTAMP NOT NULL
    );
    CREATE TABLE ingest_issue (
        source_id VARCHAR NOT NULL,
        path VARCHAR NOT NULL,
        problem VARCHAR NOT NULL,
        seen_at TIMESTAMP NOT NULL
    );
    """,
    # v2: one row per training record (epoch / round) of a run, so progress is queryable while it runs.
    2: """
    CREATE TABLE train_record (
        run_id VARCHAR NOT NULL,
        epoch INTEGER NOT NULL,
        step BIGINT NOT NULL,
        loss DOUBLE,
        record VARCHAR NOT NULL,
        created_at TIMESTAMP NOT NULL,
        PRIMARY KEY (run_id, epoch, step)
    );
    ALTER TABLE text_vocabulary ADD COLUMN note VARCHAR;
    """,
    # v3: a reviewer can undo a decision. DuckDB cannot alter a CHECK constraint, so the review table is
    # rebuilt with 'undo' allowed and ``undo_of`` (the review id an undo reverses); no row is lost.
    3: """
    CREATE TABLE review_v3 (
        id VARCHAR PRIMARY KEY,
        scan_id VARCHAR NOT NULL,
        class_name VARCHAR NOT NULL,
        label_set_id VARCHAR NOT NULL,
        decision VARCHAR NOT NULL
            CHECK (decision IN ('accept', 'reject', 'corrected', 'needs_correction', 'skip', 'undo')),
        comment VARCHAR,
        reviewer VARCHAR NOT NULL,
        result_label_set_id VARCHAR,
        created_at TIMESTAMP NOT NULL,
        undo_of VARCHAR
    );
    INSERT INTO review_v3 SELECT *, NULL FROM review;
    DROP TABLE review;
    ALTER TABLE review_v3 RENAME TO review;
    """,
    # v4: the held-out split, chosen once per workspace (``method``: 'stratified' for the first choice,
    # 'hash' for scans added later), and one row per scored scan x class of an 'evaluate' run.
    4: """
    CREATE TABLE split (
        scan_id VARCHAR PRIMARY KEY,
        split VARCHAR NOT NULL CHECK (split IN ('train', 'held_out')),
        method VARCHAR NOT NULL,
        fraction DOUBLE NOT NULL,
        seed BIGINT NOT NULL,
        created_at TIMESTAMP NOT NULL
    );
    CREATE TABLE evaluation (
        run_id VARCHAR NOT NULL,
        scan_id VARCHAR NOT NULL,
        source_id VARCHAR NOT NULL,
        class_name VARCHAR NOT NULL,
        truth_state VARCHAR NOT NULL CHECK (truth_state IN ('annotated_present', 'annotated_absent')),
        truth_voxels BIGINT NOT NULL,
        predicted_voxels BIGINT NOT NULL,
        dice DOUBLE NOT NULL,
        nsd DOUBLE NOT NULL,
        tolerance_mm DOUBLE NOT NULL,
        truth_label_set_id VARCHAR,
        prediction_label_set_id VARCHAR,
        PRIMARY KEY (run_id, scan_id, class_name)
    );
    """,
    # v5: one row per active-learning round (workbench.learning.rounds): its runs, checkpoint, inputs
    # (training-set composition by label origin, review counts) and metrics (the held-out evaluation
    # summary) as JSON.
    5: """
    CREATE TABLE round (
        round_number INTEGER PRIMARY KEY,
        train_run_id VARCHAR NOT NULL,
        pseudolabel_run_id VARCHAR,
        evaluate_run_id VARCHAR,
        checkpoint_path VARCHAR NOT NULL,
        checkpoint_sha256 VARCHAR NOT NULL,
        previous_checkpoint_sha256 VARCHAR,
        reviewed INTEGER NOT NULL,
        inputs VARCHAR NOT NULL,
        metrics VARCHAR NOT NULL,
        created_at TIMESTAMP NOT NULL
    );
    """,
    # v6: the assembly and decision rules as views, so every query states them once (module docstring).
    6: """
    CREATE MACRO current_label_of(origins) AS TABLE
        SELECT l.scan_id, c.class_name, c.state, l.id AS label_set_id, l.mask_key, l.origin, l.version
        FROM class_coverage c JOIN label_set l ON l.id = c.label_set_id
        WHERE c.state <> 'not_annotated' AND list_contains(origins, l.origin)
        QUALIFY row_number() OVER (
            PARTITION BY l.scan_id, c.class_name
            ORDER BY CASE l.origin WHEN 'revised' THEN 3 WHEN 'original' THEN 2 ELSE 1 END DESC,
                     l.version DESC
        ) = 1;
    CREATE VIEW current_label AS SELECT * FROM current_label_of(['revised', 'original', 'pseudo']);
    CREATE VIEW current_original AS
        SELECT scan_id, arg_max(id, version) AS label_set_id
        FROM label_set WHERE origin = 'original' GROUP BY scan_id;
    CREATE VIEW standing_review AS
        SELECT r.* FROM review r
        WHERE r.decision <> 'undo'
          AND r.id NOT IN (SELECT undo_of FROM review WHERE decision = 'undo' AND undo_of IS NOT NULL);
    """,
    # v7: the assembly rule (module docstring) honours review decisions: accepted pseudo-labels rank above
    # plain ones, rejected ones are never used; ``basis`` says which applied.
    7: """
    DROP VIEW current_label;
    DROP MACRO TABLE current_label_of;
    CREATE VIEW verdict AS
        SELECT scan_id, class_name, label_set_id, arg_max(decision, created_at) AS decision,
               arg_max(reviewer, created_at) AS reviewer, max(created_at) AS decided_at,
               arg_max(id, created_at) AS review_id
        FROM standing_review GROUP BY scan_id, class_name, label_set_id;
    CREATE MACRO current_label_of(bases) AS TABLE
        WITH candidate AS (
            SELECT l.scan_id, c.class_name, c.state, l.id AS label_set_id, l.mask_key, l.origin, l.version,
                   CASE WHEN l.origin <> 'pseudo' THEN l.origin
                        WHEN v.decision = 'accept' THEN 'accepted'
                        WHEN v.decision IN ('reject', 'needs_correction') THEN 'rejected'
                        ELSE 'pseudo' END AS basis
            FROM class_coverage c JOIN label_set l ON l.id = c.label_set_id
            LEFT JOIN verdict v ON v.label_set_id = c.label_set_id AND v.class_name = c.class_name
            WHERE c.state <> 'not_annotated'
        )
        SELECT * FROM candidate
        WHERE basis <> 'rejected'
          AND (list_contains(bases, basis) OR (basis = 'accepted' AND list_contains(bases, 'pseudo')))
        QUALIFY row_number() OVER (
            PARTITION BY scan_id, class_name
            ORDER BY CASE basis WHEN 'revised' THEN 4 WHEN 'original' THEN 3 WHEN 'accepted' THEN 2 ELSE 1 END
                     DESC, version DESC
        ) = 1;
    CREATE VIEW current_label AS SELECT * FROM current_label_of(['revised', 'original', 'pseudo']);
    """,
    # v8 (queue and double reading, #13): the reading plan (which items two readers judge blind to each
    # other), the inter-reader Dice of two corrections, the requeue check (Dice of a later item against the
    # label a reviewer decided); ``verdict`` becomes the adjudication / the readers' common decision for a
    # double-read item, carries a reject to a later prediction that matches it, and a reader's correction
    # counts only once the item's verdict is ``corrected`` (``held_revision``).
    8: """
    CREATE TABLE reading_plan (
        label_set_id VARCHAR NOT NULL,
        class_name VARCHAR NOT NULL,
        scan_id VARCHAR NOT NULL,
        double_read BOOLEAN NOT NULL,
        share DOUBLE NOT NULL,
        planned_at TIMESTAMP NOT NULL,
        PRIMARY KEY (label_set_id, class_name)
    );
    CREATE TABLE reading_dice (
        review_a VARCHAR NOT NULL,
        review_b VARCHAR NOT NULL,
        scan_id VARCHAR NOT NULL,
        class_name VARCHAR NOT NULL,
        label_set_id VARCHAR NOT NULL,
        dice DOUBLE NOT NULL,
        threshold DOUBLE NOT NULL,
        computed_at TIMESTAMP NOT NULL,
        PRIMARY KEY (review_a, review_b)
    );
    CREATE TABLE requeue_check (
        label_set_id VARCHAR NOT NULL,
        class_name VARCHAR NOT NULL,
        review_id VARCHAR NOT NULL,
        scan_id VARCHAR NOT NULL,
        decision VARCHAR NOT NULL,
        decided_label_set_id VARCHAR NOT NULL,
        dice DOUBLE NOT NULL,
        threshold DOUBLE NOT NULL,
        checked_at TIMESTAMP NOT NULL,
        PRIMARY KEY (label_set_id, class_name, review_id)
    );
    CREATE VIEW reading AS
        WITH r AS (
            SELECT s.*,
                   min(s.created_at) OVER (PARTITION BY s.label_set_id, s.class_name, s.reviewer) AS first_at
            FROM standing_review s
            JOIN reading_plan p ON p.label_set_id = s.label_set_id AND p.class_name = s.class_name
            WHERE p.double_read AND s.decision <> 'skip'
        )
        SELECT *, dense_rank() OVER (PARTITION BY label_set_id, class_name ORDER BY first_at, reviewer)
                  AS reader_rank
        FROM r;
    CREATE VIEW double_read_item AS
        WITH newest AS (
            SELECT * FROM reading WHERE reader_rank <= 2
            QUALIFY row_number() OVER (
                PARTITION BY label_set_id, class_name, reviewer ORDER BY created_at DESC, id DESC) = 1
        ), pair AS (
            SELECT label_set_id, class_name, count(*) AS readings,
                   max(CASE WHEN reader_rank = 1 THEN id END) AS review_a,
                   max(CASE WHEN reader_rank = 1 THEN reviewer END) AS reader_a,
                   max(CASE WHEN reader_rank = 1 THEN decision END) AS decision_a,
                   max(CASE WHEN reader_rank = 1 THEN result_label_set_id END) AS result_a,
                   max(CASE WHEN reader_rank = 2 THEN id END) AS review_b,
                   max(CASE WHEN reader_rank = 2 THEN reviewer END) AS reader_b,
                   max(CASE WHEN reader_rank = 2 THEN decision END) AS decision_b,
                   max(CASE WHEN reader_rank = 2 THEN result_label_set_id END) AS result_b,
                   max(created_at) AS read_at
            FROM newest GROUP BY label_set_id, class_name
        ), adjudication AS (
            SELECT label_set_id, class_name, arg_max(id, created_at) AS adjudication_id,
                   arg_max(decision, created_at) AS adjudication,
                   arg_max(reviewer, created_at) AS adjudicator,
                   max(created_at) AS adjudicated_at
            FROM reading WHERE reader_rank > 2 GROUP BY label_set_id, class_name
        )
        SELECT p0.scan_id, p0.class_name, p0.label_set_id, coalesce(p.readings, 0) AS readings,
               p.review_a, p.reader_a, p.decision_a, p.result_a,
               p.review_b, p.reader_b, p.decision_b, p.result_b, p.read_at,
               x.dice AS reading_dice, x.threshold AS agreement_dice,
               a.adjudication_id, a.adjudication, a.adjudicator, a.adjudicated_at,
               CASE WHEN a.adjudication_id IS NOT NULL THEN 'adjudicated'
                    WHEN coalesce(p.readings, 0) < 2 THEN 'reading'
                    WHEN p.decision_a = p.decision_b
                         AND (p.decision_a <> 'corrected' OR x.dice >= x.threshold) THEN 'agreed'
                    ELSE 'disagreed' END AS state
        FROM reading_plan p0
        LEFT JOIN pair p ON p.label_set_id = p0.label_set_id AND p.class_name = p0.class_name
        LEFT JOIN reading_dice x ON x.review_a = p.review_a AND x.review_b = p.review_b
        LEFT JOIN adjudication a ON a.label_set_id = p0.label_set_id AND a.class_name = p0.class_name
        WHERE p0.double_read;
    CREATE VIEW decided AS
        SELECT scan_id, class_name, label_set_id, arg_max(decision, created_at) AS decision,
               arg_max(reviewer, created_at) AS reviewer, max(created_at) AS decided_at,
               arg_max(id, created_at) AS review_id, 'single' AS reading
        FROM standing_review s
        WHERE NOT EXISTS (
            SELECT 1 FROM reading_plan p
            WHERE p.double_read AND p.label_set_id = s.label_set_id AND p.class_name = s.class_name)
        GROUP BY scan_id, class_name, label_set_id
        UNION ALL BY NAME
        SELECT scan_id, class_name, label_set_id,
               CASE state WHEN 'adjudicated' THEN adjudication ELSE decision_b END AS decision,
               CASE state WHEN 'adjudicated' THEN adjudicator ELSE reader_b END AS reviewer,
               CASE state WHEN 'adjudicated' THEN adjudicated_at ELSE read_at END AS decided_at,
               CASE state WHEN 'adjudicated' THEN adjudication_id ELSE review_b END AS review_id,
               CASE state WHEN 'adjudicated' THEN 'adjudicated' ELSE 'double' END AS reading
        FROM double_read_item WHERE state IN ('adjudicated', 'agreed');
    CREATE VIEW prior_decision AS
        WITH item AS (
            SELECT DISTINCT u.scan_id, u.class_name, u.label_set_id, l.version
            FROM uncertainty u JOIN label_set l ON l.id = u.label_set_id
        )
        SELECT i.scan_id, i.class_name, i.label_set_id, v.decision, v.reviewer, v.decided_at, v.review_id,
               coalesce(CASE WHEN v.decision = 'corrected' THEN r.result_label_set_id END, v.label_set_id)
                   AS decided_label_set_id
        FROM item i
        JOIN decided v ON v.scan_id = i.scan_id AND v.class_name = i.class_name
        JOIN label_set vl ON vl.id = v.label_set_id AND vl.version < i.version
        LEFT JOIN review r ON r.id = v.review_id
        WHERE v.decision IN ('accept', 'reject', 'corrected', 'needs_correction')
        QUALIFY row_number() OVER (
            PARTITION BY i.label_set_id, i.class_name
            ORDER BY vl.version DESC, v.decided_at DESC, v.review_id DESC
        ) = 1;
    CREATE OR REPLACE VIEW verdict AS
        SELECT scan_id, class_name, label_set_id, decision, reviewer, decided_at, review_id, reading
        FROM decided
        UNION ALL BY NAME
        SELECT p.scan_id, p.class_name, p.label_set_id, p.decision, p.reviewer, p.decided_at, p.review_id,
               'carried' AS reading
        FROM prior_decision p
        JOIN requeue_check c
          ON c.label_set_id = p.label_set_id AND c.class_name = p.class_name AND c.review_id = p.review_id
        WHERE p.decision IN ('reject', 'needs_correction') AND c.dice >= c.threshold
          AND NOT EXISTS (
              SELECT 1 FROM decided d WHERE d.label_set_id = p.label_set_id AND d.class_name = p.class_name);
    CREATE VIEW held_revision AS
        SELECT DISTINCT r.result_label_set_id AS label_set_id, r.class_name
        FROM reading r
        LEFT JOIN decided v ON v.label_set_id = r.label_set_id AND v.class_name = r.class_name
        WHERE r.decision = 'corrected' AND r.reader_rank <= 2 AND r.result_label_set_id IS NOT NULL
          AND v.decision IS DISTINCT FROM 'corrected';
    DROP VIEW current_label;
    DROP MACRO TABLE current_label_of;
    CREATE MACRO current_label_of(bases) AS TABLE
        WITH candidate AS (
            SELECT l.scan_id, c.class_name, c.state, l.id AS label_set_id, l.mask_key, l.origin, l.version,
                   CASE WHEN h.label_set_id IS NOT NULL THEN 'rejected'
                        WHEN l.origin <> 'pseudo' THEN l.origin
                        WHEN v.decision = 'accept' THEN 'accepted'
                        WHEN v.decision IN ('reject', 'needs_correction') THEN 'rejected'
                        ELSE 'pseudo' END AS basis
            FROM class_coverage c JOIN label_set l ON l.id = c.label_set_id
            LEFT JOIN verdict v ON v.label_set_id = c.label_set_id AND v.class_name = c.class_name
            LEFT JOIN held_revision h ON h.label_set_id = c.label_set_id AND h.class_name = c.class_name
            WHERE c.state <> 'not_annotated'
        )
        SELECT * FROM candidate
        WHERE basis <> 'rejected'
          AND (list_contains(bases, basis) OR (basis = 'accepted' AND list_contains(bases, 'pseudo')))
        QUALIFY row_number() OVER (
            PARTITION BY scan_id, class_name
            ORDER BY CASE basis WHEN 'revised' THEN 4 WHEN 'original' THEN 3 WHEN 'accepted' THEN 2 ELSE 1 END
                     DESC, version DESC
        ) = 1;
    CREATE VIEW current_label AS SELECT * FROM current_label_of(['revised', 'original', 'pseudo']);
    """,
    # v9 (model registry, #12): one row per registered model (a release file or a workbench checkpoint),
    # named, keyed by the sha256 of the original file.
    9: """
    CREATE TABLE model (
        name VARCHAR PRIMARY KEY,
        sha256 VARCHAR NOT NULL UNIQUE,
        kind VARCHAR NOT NULL,
        backbone VARCHAR NOT NULL,
        file VARCHAR NOT NULL,
        original_path VARCHAR,
        class_names VARCHAR[] NOT NULL,
        vocabulary_sha256 VARCHAR NOT NULL,
        encoder_id VARCHAR NOT NULL,
        spacing_mm DOUBLE[3] NOT NULL,
        patch INTEGER[3] NOT NULL,
        settings VARCHAR NOT NULL,
        trained_on VARCHAR,
        registered_at TIMESTAMP NOT NULL
    );
    """,
    # v10 (scale, #15): the long tail as last computed (storage.catalog.Catalog.long_tail): per scan x class
    # the state the assembly rule's annotations (revised, original, accepted) give it, the per class x
    # source counts with the catalog fingerprint they belong to, and the row counts seen at that refresh;
    # an index for the one-scan reads of the Review page (label sets by scan).
    10: """
    CREATE TABLE annotation_state (
        scan_id VARCHAR NOT NULL,
        source_id VARCHAR NOT NULL,
        class_name VARCHAR NOT NULL,
        state VARCHAR NOT NULL
    );
    CREATE TABLE long_tail_meta (
        label_sets BIGINT NOT NULL,
        reviews BIGINT NOT NULL,
        scans BIGINT NOT NULL,
        reading_pairs BIGINT NOT NULL
    );
    CREATE TABLE long_tail_cache (
        fingerprint VARCHAR NOT NULL,
        class_name VARCHAR NOT NULL,
        source_id VARCHAR NOT NULL,
        annotated BIGINT NOT NULL,
        present BIGINT NOT NULL,
        absent BIGINT NOT NULL,
        not_annotated BIGINT NOT NULL
    );
    CREATE INDEX label_set_scan ON label_set (scan_id);
    """,
    # v11 (scale at a million scans, #15): maintained answers the app's pages read instead of recomputing
    # the rules over millions of rows: the queue's items with their pending rule (``queue_item``), the
    # assembly rule's current label per scan x class (``assembled_label``), the Long tail page's
    # co-occurrence counts and volume distribution (``cooccurrence_cache``, ``volume_summary_cache``,
    # ``volume_outlier_cache``), each refreshed on read when the row counts it depends on moved
    # (``derived_meta``; ``derived_touch`` logs the scans of rows replaced in place); see storage.catalog,
    # section "scale at a million scans". ``prior_decision`` (same rows) reads only the items of scan x
    # classes that have a settling decision, not every uncertainty row.
    11: """
    CREATE TABLE derived_meta (
        name VARCHAR PRIMARY KEY,
        marks VARCHAR NOT NULL
    );
    CREATE TABLE derived_touch (scan_id VARCHAR NOT NULL, touched_at TIMESTAMP NOT NULL);
    CREATE TABLE queue_item (
        scan_id VARCHAR, source_id VARCHAR, case_id VARCHAR, class_name VARCHAR, run_id VARCHAR,
        label_set_id VARCHAR, origin VARCHAR, version INTEGER, score DOUBLE, signals VARCHAR,
        reasons VARCHAR[], verdict VARCHAR, decided_by VARCHAR, decided_at TIMESTAMP, review_id VARCHAR,
        prior_decision VARCHAR, prior_reviewer VARCHAR, prior_review_id VARCHAR, prior_dice DOUBLE,
        requeue_dice DOUBLE, double_read BOOLEAN, readings BIGINT, reading_state VARCHAR, newest BOOLEAN,
        in_catalog BOOLEAN, status VARCHAR, requeued BOOLEAN, open BOOLEAN
    );
    CREATE TABLE assembled_label (
        scan_id VARCHAR NOT NULL, source_id VARCHAR NOT NULL, image_path VARCHAR NOT NULL,
        class_name VARCHAR NOT NULL, state VARCHAR NOT NULL, label_set_id VARCHAR NOT NULL,
        mask_key VARCHAR NOT NULL, origin VARCHAR NOT NULL, basis VARCHAR NOT NULL, version INTEGER NOT NULL
    );
    CREATE TABLE cooccurrence_cache (a VARCHAR NOT NULL, b VARCHAR NOT NULL, n BIGINT NOT NULL);
    CREATE TABLE volume_summary_cache (
        class_name VARCHAR NOT NULL, n BIGINT NOT NULL, q1 DOUBLE, median DOUBLE, q3 DOUBLE, lo DOUBLE,
        hi DOUBLE
    );
    CREATE TABLE volume_outlier_cache (
        scan_id VARCHAR NOT NULL, class_name VARCHAR NOT NULL, volume_ml DOUBLE NOT NULL,
        label_set_id VARCHAR NOT NULL, rank BIGINT NOT NULL
    );
    CREATE OR REPLACE VIEW prior_decision AS
        WITH settling AS (
            SELECT * FROM decided WHERE decision IN ('accept', 'reject', 'corrected', 'needs_correction')
        ), item AS (
            SELECT DISTINCT u.scan_id, u.class_name, u.label_set_id, l.version
            FROM uncertainty u JOIN label_set l ON l.id = u.label_set_id
            SEMI JOIN settling d ON d.scan_id = u.scan_id AND d.class_name = u.class_name
        )
        SELECT i.scan_id, i.class_name, i.label_set_id, v.decision, v.reviewer, v.decided_at, v.review_id,
               coalesce(CASE WHEN v.decision = 'corrected' THEN r.result_label_set_id END, v.label_set_id)
                   AS decided_label_set_id
        FROM item i
        JOIN settling v ON v.scan_id = i.scan_id AND v.class_name = i.class_name
        JOIN label_set vl ON vl.id = v.label_set_id AND vl.version < i.version
        LEFT JOIN review r ON r.id = v.review_id
        QUALIFY row_number() OVER (
            PARTITION BY i.label_set_id, i.class_name
            ORDER BY vl.version DESC, v.decided_at DESC, v.review_id DESC
        ) = 1;
    """,
    # v12 (fine-tuning, #12): classes added to the taxonomy as data (the paper's incremental learning:
    # ``workbench train --init MODEL --add-class NAME``), one row each, label values from 33 up; the
    # catalog installs them into ``harmonize.taxonomy`` on open, so labels, pseudo-labels, coverage,
    # exports and the queue take them like the 32 universal classes.
    12: """
    CREATE TABLE added_class (
        name VARCHAR PRIMARY KEY,
        class_index INTEGER NOT NULL UNIQUE,
        prompt_name VARCHAR NOT NULL,
        kind VARCHAR NOT NULL,
        parents VARCHAR[] NOT NULL,
        added_at TIMESTAMP NOT NULL
    );
    """,
    # v13 (scale at a million scans, part 2, #15): the rules' views and the assembly macro recreated from
    # their text in RULE_VIEWS / ASSEMBLY_RULE (same rows as v11), so the maintained tables' refreshes
    # state them over the rows of the changed scans only (scoped_rules_sql); the maintained current label
    # keeps its state, origin and basis as ENUMs (exported as dictionaries: categorical columns).
    13: rule_views_sql() + ASSEMBLED_LABEL_V13,
    # v14 (#15, training rows at a million scans): the maintained current label stores a mask key only
    # where it is not the label set's id (every writer today uses the id), so a training-set read
    # exports one unique string per row fewer; refilled by its first reader.
    14: ASSEMBLED_LABEL_V14,
    # v15 (#15, the Review page's and the learning wing's reads at a million scans): the maintained
    # current label is stored sorted by scan within each class (its rebuild inserts a class at a time,
    # ordered by scan), so a read of one scan x class skips every row group but one by its zonemaps and
    # a class's rows compress better; the same table, refilled (in that order) by its first reader.
    15: ASSEMBLED_LABEL_V14,
}
