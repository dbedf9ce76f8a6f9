-- the parse tree of one SQL $statement as JSON (an error entry when it is no query)
SELECT json_serialize_sql($statement::VARCHAR)
