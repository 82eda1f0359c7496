-- Boards: dashboards composed of panels across pipelines. `spec` is the board's JSON (title,
-- range, panels) as dash-boards checks it; panels name pipelines and views, which may come and
-- go (a panel whose pipeline is gone says so). Times are unix ms.
CREATE TABLE boards (
    name       TEXT   PRIMARY KEY,
    spec       TEXT   NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
