"""catalog: regions, images per region, their lifecycle jobs and quotas."""
