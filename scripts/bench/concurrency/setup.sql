-- Tables for the concurrent-write workloads (workloads.txt), created through the target before each workload.
DROP TABLE IF EXISTS cw_jobs, cw_jobs_sl, cw_sess, cw_ev, cw_ev_total, cw_inv, cw_acct, cw_multi CASCADE;
CREATE TABLE cw_jobs (id int PRIMARY KEY, status text NOT NULL DEFAULT 'new', worker int);
INSERT INTO cw_jobs (id) SELECT g FROM generate_series(1, 5000) g;
CREATE TABLE cw_jobs_sl (id int PRIMARY KEY, status text NOT NULL DEFAULT 'new', worker int);
INSERT INTO cw_jobs_sl (id) SELECT g FROM generate_series(1, 5000) g;
CREATE TABLE cw_sess (id int PRIMARY KEY, t timestamptz NOT NULL);
CREATE TABLE cw_ev (id int PRIMARY KEY, v int);
CREATE TABLE cw_ev_total (n bigint);
INSERT INTO cw_ev_total VALUES (0);
CREATE TABLE cw_inv (id int PRIMARY KEY, v int);
CREATE TABLE cw_acct (id int PRIMARY KEY, bal int NOT NULL);
INSERT INTO cw_acct SELECT g, 100 FROM generate_series(1, 20) g;
