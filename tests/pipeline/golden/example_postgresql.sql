CREATE TABLE lab_subject."#lab" (
	lab_name VARCHAR(32) NOT NULL, 
	institution VARCHAR(255) DEFAULT '' NOT NULL, 
	timezone VARCHAR(64) DEFAULT 'UTC' NOT NULL, 
	PRIMARY KEY (lab_name)
);

COMMENT ON TABLE lab_subject."#lab" IS 'Laboratories that own subjects';

COMMENT ON COLUMN lab_subject."#lab".lab_name IS ':varchar(32):short lab name';

COMMENT ON COLUMN lab_subject."#lab".institution IS ':varchar(255):';

COMMENT ON COLUMN lab_subject."#lab".timezone IS ':varchar(64):';

CREATE TABLE lab_subject.subject (
	subject_uuid CHAR(36) NOT NULL, 
	lab_name VARCHAR(32) NOT NULL, 
	nickname VARCHAR(64) NOT NULL, 
	sex lab_subject.enum_e54fc739 DEFAULT 'U' NOT NULL, 
	birth_date DATE, 
	weight NUMERIC(6, 2), 
	alive BOOLEAN DEFAULT true NOT NULL, 
	json_extra JSONB, 
	PRIMARY KEY (subject_uuid), 
	CONSTRAINT subject_ibfk_1 FOREIGN KEY(lab_name) REFERENCES lab_subject."#lab" (lab_name) ON DELETE RESTRICT ON UPDATE CASCADE
);

CREATE INDEX idx_subject_lab_name ON lab_subject.subject (lab_name);

COMMENT ON TABLE lab_subject.subject IS 'Experimental subject (synced from the LIMS)';

COMMENT ON COLUMN lab_subject.subject.subject_uuid IS ':char(36):LIMS id';

COMMENT ON COLUMN lab_subject.subject.lab_name IS ':varchar(32):short lab name';

COMMENT ON COLUMN lab_subject.subject.nickname IS ':varchar(64):LIMS nickname';

COMMENT ON COLUMN lab_subject.subject.sex IS ':enum(''M'', ''F'', ''U''):';

COMMENT ON COLUMN lab_subject.subject.birth_date IS ':date:';

COMMENT ON COLUMN lab_subject.subject.weight IS ':decimal(6,2):';

COMMENT ON COLUMN lab_subject.subject.alive IS ':bool:';

COMMENT ON COLUMN lab_subject.subject.json_extra IS ':json:';

CREATE TABLE lab_acquisition.session (
	subject_uuid CHAR(36) NOT NULL, 
	session_start TIMESTAMP(6) WITHOUT TIME ZONE NOT NULL, 
	lab_name VARCHAR(32), 
	session_uuid CHAR(36) NOT NULL, 
	n_trials INTEGER, 
	task_protocol VARCHAR(255), 
	qc lab_acquisition.enum_f76536b4 DEFAULT 'NOT_SET' NOT NULL, 
	extended_qc JSONB, 
	trace BYTEA, 
	end_time TIMESTAMP(3) WITHOUT TIME ZONE, 
	rig_temperature REAL, 
	PRIMARY KEY (subject_uuid, session_start), 
	CONSTRAINT session_ibfk_1 FOREIGN KEY(subject_uuid) REFERENCES lab_subject.subject (subject_uuid) ON DELETE RESTRICT ON UPDATE CASCADE, 
	CONSTRAINT session_ibfk_2 FOREIGN KEY(lab_name) REFERENCES lab_subject."#lab" (lab_name) ON DELETE RESTRICT ON UPDATE CASCADE
);

CREATE INDEX idx_session_lab_name ON lab_acquisition.session (lab_name);

COMMENT ON TABLE lab_acquisition.session IS 'Recording session';

COMMENT ON COLUMN lab_acquisition.session.subject_uuid IS ':char(36):LIMS id';

COMMENT ON COLUMN lab_acquisition.session.session_start IS ':datetime(6):';

COMMENT ON COLUMN lab_acquisition.session.lab_name IS ':varchar(32):short lab name';

COMMENT ON COLUMN lab_acquisition.session.session_uuid IS ':char(36):';

COMMENT ON COLUMN lab_acquisition.session.n_trials IS ':int32:';

COMMENT ON COLUMN lab_acquisition.session.task_protocol IS ':varchar(255):';

COMMENT ON COLUMN lab_acquisition.session.qc IS ':enum(''NOT_SET'', ''PASS'', ''WARNING'', ''FAIL''):';

COMMENT ON COLUMN lab_acquisition.session.extended_qc IS ':json:';

COMMENT ON COLUMN lab_acquisition.session.trace IS ':<blob>:';

COMMENT ON COLUMN lab_acquisition.session.end_time IS ':datetime(3):';

COMMENT ON COLUMN lab_acquisition.session.rig_temperature IS ':float32:';

CREATE TABLE lab_acquisition.session__probe (
	subject_uuid CHAR(36) NOT NULL, 
	session_start TIMESTAMP(6) WITHOUT TIME ZONE NOT NULL, 
	probe_name VARCHAR(16) NOT NULL, 
	probe_uuid CHAR(36) NOT NULL, 
	projection lab_acquisition.enum_08a01091 DEFAULT 'left' NOT NULL, 
	depth_um DOUBLE PRECISION, 
	raw_header BYTEA, 
	n_channels SMALLINT DEFAULT 384 NOT NULL, 
	PRIMARY KEY (subject_uuid, session_start, probe_name), 
	CONSTRAINT session__probe_ibfk_1 FOREIGN KEY(subject_uuid, session_start) REFERENCES lab_acquisition.session (subject_uuid, session_start) ON DELETE RESTRICT ON UPDATE CASCADE
);

COMMENT ON TABLE lab_acquisition.session__probe IS 'Probe insertion of a session';

COMMENT ON COLUMN lab_acquisition.session__probe.subject_uuid IS ':char(36):LIMS id';

COMMENT ON COLUMN lab_acquisition.session__probe.session_start IS ':datetime(6):';

COMMENT ON COLUMN lab_acquisition.session__probe.probe_name IS ':varchar(16):';

COMMENT ON COLUMN lab_acquisition.session__probe.probe_uuid IS ':char(36):';

COMMENT ON COLUMN lab_acquisition.session__probe.projection IS ':enum(''left'', ''right''):';

COMMENT ON COLUMN lab_acquisition.session__probe.depth_um IS ':float64:';

COMMENT ON COLUMN lab_acquisition.session__probe.raw_header IS ':bytes:';

COMMENT ON COLUMN lab_acquisition.session__probe.n_channels IS ':int16:';

CREATE TABLE lab_acquisition.__session_stats (
	subject_uuid CHAR(36) NOT NULL, 
	session_start TIMESTAMP(6) WITHOUT TIME ZONE NOT NULL, 
	mean_trace DOUBLE PRECISION NOT NULL, 
	n_samples INTEGER NOT NULL, 
	PRIMARY KEY (subject_uuid, session_start), 
	CONSTRAINT __session_stats_ibfk_1 FOREIGN KEY(subject_uuid, session_start) REFERENCES lab_acquisition.session (subject_uuid, session_start) ON DELETE RESTRICT ON UPDATE CASCADE
);

COMMENT ON TABLE lab_acquisition.__session_stats IS 'Per-session summary computed from the trace';

COMMENT ON COLUMN lab_acquisition.__session_stats.subject_uuid IS ':char(36):LIMS id';

COMMENT ON COLUMN lab_acquisition.__session_stats.session_start IS ':datetime(6):';

COMMENT ON COLUMN lab_acquisition.__session_stats.mean_trace IS ':float64:';

COMMENT ON COLUMN lab_acquisition.__session_stats.n_samples IS ':int32:';
