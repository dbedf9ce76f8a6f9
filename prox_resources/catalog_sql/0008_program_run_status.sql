-- A refinement records every document: kept, dropped, or error (a document one of whose stages
-- raised, with the stage and exception in `error`; kept is false, reason 'refine_error').
ALTER TABLE program_runs ADD COLUMN status VARCHAR;
ALTER TABLE program_runs ADD COLUMN error VARCHAR;
UPDATE program_runs SET status = CASE WHEN kept THEN 'kept' ELSE 'dropped' END;
