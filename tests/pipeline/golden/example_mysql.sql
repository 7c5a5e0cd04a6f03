CREATE TABLE lab_subject.`#lab` (
	lab_name VARCHAR(32) NOT NULL COMMENT ':varchar(32):short lab name', 
	institution VARCHAR(255) NOT NULL COMMENT ':varchar(255):' DEFAULT '', 
	timezone VARCHAR(64) NOT NULL COMMENT ':varchar(64):' DEFAULT 'UTC', 
	PRIMARY KEY (lab_name)
)ENGINE=InnoDB CHARSET=utf8mb4 COMMENT='Laboratories that own subjects' COLLATE utf8mb4_bin;

CREATE TABLE lab_subject.subject (
	subject_uuid BINARY(16) NOT NULL COMMENT ':uuid:LIMS id', 
	lab_name VARCHAR(32) NOT NULL COMMENT ':varchar(32):short lab name', 
	nickname VARCHAR(64) NOT NULL COMMENT ':varchar(64):LIMS nickname', 
	sex ENUM('M','F','U') NOT NULL COMMENT ':enum(''M'', ''F'', ''U''):' DEFAULT 'U', 
	birth_date DATE COMMENT ':date:', 
	weight NUMERIC(6, 2) COMMENT ':decimal(6,2):', 
	alive TINYINT NOT NULL COMMENT ':bool:' DEFAULT 1, 
	json_extra JSON COMMENT ':json:', 
	PRIMARY KEY (subject_uuid), 
	CONSTRAINT subject_ibfk_1 FOREIGN KEY(lab_name) REFERENCES lab_subject.`#lab` (lab_name) ON DELETE RESTRICT ON UPDATE CASCADE
)ENGINE=InnoDB CHARSET=utf8mb4 COMMENT='Experimental subject (synced from the LIMS)' COLLATE utf8mb4_bin;

CREATE TABLE lab_acquisition.session (
	subject_uuid BINARY(16) NOT NULL COMMENT ':uuid:LIMS id', 
	session_start DATETIME(6) NOT NULL COMMENT ':datetime(6):', 
	lab_name VARCHAR(32) COMMENT ':varchar(32):short lab name', 
	session_uuid BINARY(16) NOT NULL COMMENT ':uuid:', 
	n_trials INTEGER COMMENT ':int32:', 
	task_protocol VARCHAR(255) COMMENT ':varchar(255):', 
	qc ENUM('NOT_SET','PASS','WARNING','FAIL') NOT NULL COMMENT ':enum(''NOT_SET'', ''PASS'', ''WARNING'', ''FAIL''):' DEFAULT 'NOT_SET', 
	extended_qc JSON COMMENT ':json:', 
	trace LONGBLOB COMMENT ':<blob>:', 
	end_time DATETIME(3) COMMENT ':datetime(3):', 
	rig_temperature FLOAT COMMENT ':float32:', 
	PRIMARY KEY (subject_uuid, session_start), 
	CONSTRAINT session_ibfk_1 FOREIGN KEY(subject_uuid) REFERENCES lab_subject.subject (subject_uuid) ON DELETE RESTRICT ON UPDATE CASCADE, 
	CONSTRAINT session_ibfk_2 FOREIGN KEY(lab_name) REFERENCES lab_subject.`#lab` (lab_name) ON DELETE RESTRICT ON UPDATE CASCADE
)ENGINE=InnoDB CHARSET=utf8mb4 COMMENT='Recording session' COLLATE utf8mb4_bin;

CREATE TABLE lab_acquisition.session__probe (
	subject_uuid BINARY(16) NOT NULL COMMENT ':uuid:LIMS id', 
	session_start DATETIME(6) NOT NULL COMMENT ':datetime(6):', 
	probe_name VARCHAR(16) NOT NULL COMMENT ':varchar(16):', 
	probe_uuid BINARY(16) NOT NULL COMMENT ':uuid:', 
	projection ENUM('left','right') NOT NULL COMMENT ':enum(''left'', ''right''):' DEFAULT 'left', 
	depth_um DOUBLE COMMENT ':float64:', 
	raw_header LONGBLOB COMMENT ':bytes:', 
	n_channels SMALLINT NOT NULL COMMENT ':int16:' DEFAULT 384, 
	PRIMARY KEY (subject_uuid, session_start, probe_name), 
	CONSTRAINT session__probe_ibfk_1 FOREIGN KEY(subject_uuid, session_start) REFERENCES lab_acquisition.session (subject_uuid, session_start) ON DELETE RESTRICT ON UPDATE CASCADE
)ENGINE=InnoDB CHARSET=utf8mb4 COMMENT='Probe insertion of a session' COLLATE utf8mb4_bin;

CREATE TABLE lab_acquisition.__session_stats (
	subject_uuid BINARY(16) NOT NULL COMMENT ':uuid:LIMS id', 
	session_start DATETIME(6) NOT NULL COMMENT ':datetime(6):', 
	mean_trace DOUBLE NOT NULL COMMENT ':float64:', 
	n_samples INTEGER NOT NULL COMMENT ':int32:', 
	PRIMARY KEY (subject_uuid, session_start), 
	CONSTRAINT __session_stats_ibfk_1 FOREIGN KEY(subject_uuid, session_start) REFERENCES lab_acquisition.session (subject_uuid, session_start) ON DELETE RESTRICT ON UPDATE CASCADE
)ENGINE=InnoDB CHARSET=utf8mb4 COMMENT='Per-session summary computed from the trace' COLLATE utf8mb4_bin;
