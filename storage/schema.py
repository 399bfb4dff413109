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
"""

from __future__ import annotations

SCHEMA_VERSION = 8

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
    # v8 (scale): the long tail as last computed (storage.catalog.Catalog.long_tail): per scan x class
    # the state the assembly rule's annotations (revised, original, accepted) give it, the per class x
    # source counts with the catalog fingerprint they belong to, and the row counts seen at that refresh;
    # an index for the one-scan reads of the Review page (label sets by scan).
    8: """
    CREATE TABLE annotation_state (
        scan_id VARCHAR NOT NULL,
        source_id VARCHAR NOT NULL,
        class_name VARCHAR NOT NULL,
        state VARCHAR NOT NULL
    );
    CREATE TABLE long_tail_meta (
        label_sets BIGINT NOT NULL,
        reviews BIGINT NOT NULL,
        scans BIGINT NOT NULL
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
}
