-- A `started` cost row gets its outcome in place: the commit's update changes no indexed
-- column, so it is a HOT update (no new index entries, about two WAL records fewer a job)
-- when the row's page has room for the new version. Pages filled to 60 % keep that room
-- (measured in the e2e bench: 82-92 % of the outcome updates HOT, against 19-34 % at the
-- default 100 %; BENCHMARKS.md "HOT outcome updates").
-- Only pages written from now on are filled to 60 %.
ALTER TABLE cost_rows SET (fillfactor = 60);
